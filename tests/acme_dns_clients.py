"""What real acme-dns clients put on the wire, byte for byte, read from their sources.

Each builder returns one HTTP/1.1 request exactly as that client writes it: header
spelling and order, body bytes, trailing newline or none. The reference server
(joohoi/acme-dns) accepts every one of them; the tests replay them against our door.

Sources (the code that builds each request):
- goacmedns v0.1.1 (github.com/cpu/goacmedns, `client.go` `postAPI`, `RegisterAccount`,
  `UpdateTXTRecord`): lego 4.x up to its switch to v0.2, cert-manager's acme-dns solver
  (`pkg/issuer/acme/dns/acmedns`, go.mod `cpu/goacmedns v0.1.1`). Bodies are
  `json.Marshal` of anonymous structs without tags: `{"AllowFrom":[...]}`,
  `{"SubDomain":"...","Txt":"..."}`; `Content-Type: application/json` always, even on
  an empty registration.
- goacmedns v0.2.0 (github.com/nrdcg/goacmedns, `newRequest`): current lego, Traefik
  (which embeds lego) and others. `json.Encoder` output (tagged lower-case keys and a
  trailing newline); no body and no Content-Type on a registration without allowfrom;
  `Accept: application/json`.
- Go's net/http writes Host, User-Agent, Content-Length (also `0` on an empty POST),
  the remaining headers sorted, and the transport's `Accept-Encoding: gzip` last.
- pyacmedns 0.4 (used by certbot-dns-acmedns): `requests.post(url, data=json.dumps(...))`
  with no Content-Type on registration; seen on the wire from the library itself.
- acme.sh `dnsapi/dns_acmedns.sh` through acme.sh's `_post` (curl -X POST, `--data` only
  when there is a body, no Content-Type given, so curl says
  `application/x-www-form-urlencoded`). acme.sh never sends an allow-list.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

GO_USER_AGENT = "goacmedns (linux; amd64)"
ACME_SH_USER_AGENT = "acme.sh/3.1.5 (https://github.com/acmesh-official/acme.sh)"
REQUESTS_USER_AGENT = "python-requests/2.32.3"


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    subdomain: str


Register = Callable[[str, list[str]], bytes]  # (host, allowfrom) -> request bytes
Update = Callable[[str, Credentials, str], bytes]  # (host, account, txt) -> request bytes


@dataclass(frozen=True)
class Client:
    name: str
    register: Register | None  # None: the client cannot register (accounts come from elsewhere)
    update: Update
    sends_allow_list: bool


def _request(path: str, host: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _go(path: str, host: str, headers: dict[str, str], body: bytes) -> bytes:
    """net/http's Request.write order (see the module docstring)."""
    ordered = [("User-Agent", GO_USER_AGENT), ("Content-Length", str(len(body)))]
    ordered += sorted(headers.items())
    ordered.append(("Accept-Encoding", "gzip"))
    return _request(path, host, ordered, body)


def _go_json(value: object, *, encoder: bool) -> bytes:
    compact = json.dumps(value, separators=(",", ":")).encode()
    return compact + b"\n" if encoder else compact  # json.Encoder ends with a newline


def goacmedns_v01_register(host: str, allow_from: list[str]) -> bytes:
    body = _go_json({"AllowFrom": allow_from}, encoder=False) if allow_from else b""
    return _go("/register", host, {"Content-Type": "application/json"}, body)


def goacmedns_v01_update(host: str, account: Credentials, txt: str) -> bytes:
    body = _go_json({"SubDomain": account.subdomain, "Txt": txt}, encoder=False)
    headers = {
        "Content-Type": "application/json",
        "X-Api-User": account.username,
        "X-Api-Key": account.password,
    }
    return _go("/update", host, headers, body)


def goacmedns_v02_register(host: str, allow_from: list[str]) -> bytes:
    if not allow_from:
        return _go("/register", host, {"Accept": "application/json"}, b"")
    body = _go_json({"allowfrom": allow_from}, encoder=True)
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    return _go("/register", host, headers, body)


def goacmedns_v02_update(host: str, account: Credentials, txt: str) -> bytes:
    body = _go_json({"subdomain": account.subdomain, "txt": txt}, encoder=True)
    headers = {
        "Accept": "application/json",
        "Content-Type": "application/json",
        "X-Api-User": account.username,
        "X-Api-Key": account.password,
    }
    return _go("/update", host, headers, body)


_REQUESTS_DEFAULTS = [
    ("User-Agent", REQUESTS_USER_AGENT),
    ("Accept-Encoding", "gzip, deflate"),
    ("Accept", "*/*"),
    ("Connection", "keep-alive"),
]


def pyacmedns_register(host: str, allow_from: list[str]) -> bytes:
    body = json.dumps({"allowfrom": allow_from}).encode() if allow_from else b""
    headers = [*_REQUESTS_DEFAULTS, ("Content-Length", str(len(body)))]
    return _request("/register", host, headers, body)


def pyacmedns_update(host: str, account: Credentials, txt: str) -> bytes:
    body = json.dumps({"subdomain": account.subdomain, "txt": txt}).encode()
    headers = [
        *_REQUESTS_DEFAULTS,
        ("X-Api-User", account.username),
        ("X-Api-Key", account.password),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    return _request("/update", host, headers, body)


def acme_sh_register(host: str, allow_from: list[str]) -> bytes:
    assert not allow_from, "acme.sh registers without an allow-list"
    headers = [("User-Agent", ACME_SH_USER_AGENT), ("Accept", "*/*")]
    return _request("/register", host, headers, b"")


def acme_sh_update(host: str, account: Credentials, txt: str) -> bytes:
    body = f'{{"subdomain":"{account.subdomain}", "txt": "{txt}"}}'.encode()
    headers = [
        ("User-Agent", ACME_SH_USER_AGENT),
        ("Accept", "*/*"),
        ("X-Api-User", account.username),
        ("X-Api-Key", account.password),
        ("Content-Length", str(len(body))),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ]
    return _request("/update", host, headers, body)


CLIENTS = [
    Client("goacmedns v0.1 (lego 4.x, cert-manager)", goacmedns_v01_register,
           goacmedns_v01_update, sends_allow_list=True),
    Client("goacmedns v0.2 (lego, Traefik)", goacmedns_v02_register, goacmedns_v02_update,
           sends_allow_list=True),
    Client("pyacmedns 0.4 (certbot-dns-acmedns)", pyacmedns_register, pyacmedns_update,
           sends_allow_list=True),
    Client("acme.sh dns_acmedns", acme_sh_register, acme_sh_update, sends_allow_list=False),
    # cert-manager takes accounts from a Secret and only updates (goacmedns v0.1.1).
    Client("cert-manager acme-dns solver", None, goacmedns_v01_update, sends_allow_list=False),
]  # fmt: skip
