"""Record names and values: the rules every door shares."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from receiver.challenge import (
    canonical_name,
    challenge_record_name,
    check_challenge_value,
    longest_zone,
)
from receiver.errors import BadRequest, InvalidName

from .conftest import long_domain


@pytest.mark.parametrize(
    ("domain", "record", "expected"),
    [
        ("example.com", "_acme-challenge", ("example.com", "_acme-challenge.example.com")),
        (
            "www.example.com",
            "_acme-challenge",
            ("www.example.com", "_acme-challenge.www.example.com"),
        ),
        ("*.example.com", "_acme-challenge", ("*.example.com", "_acme-challenge.example.com")),
        (
            "*.a.b.example.com",
            "_acme-challenge",
            ("*.a.b.example.com", "_acme-challenge.a.b.example.com"),
        ),
        ("Example.COM.", "_ACME-Challenge", ("example.com", "_acme-challenge.example.com")),
        (
            "example.com",
            "_acme-challenge.example.com",
            ("example.com", "_acme-challenge.example.com"),
        ),
        (
            "example.com",
            "_acme-challenge.example.com.",
            ("example.com", "_acme-challenge.example.com"),
        ),
        (
            "*.example.com",
            "_acme-challenge.example.com.",
            ("*.example.com", "_acme-challenge.example.com"),
        ),
        (
            "bücher.example",
            "_acme-challenge",
            ("xn--bcher-kva.example", "_acme-challenge.xn--bcher-kva.example"),
        ),
        (
            "xn--bcher-kva.example",
            "_acme-challenge",
            ("xn--bcher-kva.example", "_acme-challenge.xn--bcher-kva.example"),
        ),
        (
            "*.BÜCHER.example",
            "_acme-challenge",
            ("*.xn--bcher-kva.example", "_acme-challenge.xn--bcher-kva.example"),
        ),
        (
            "ｗｗｗ．example。com",  # noqa: RUF001 (full-width forms map to ASCII)
            "_acme-challenge",
            ("www.example.com", "_acme-challenge.www.example.com"),
        ),
    ],
)
def test_challenge_record_name(domain: str, record: str, expected: tuple[str, str]) -> None:
    assert challenge_record_name(domain, record) == expected


def test_apex_and_wildcard_share_one_name() -> None:
    assert (
        challenge_record_name("example.com", "_acme-challenge")[1]
        == challenge_record_name("*.example.com", "_acme-challenge")[1]
    )


@pytest.mark.parametrize(
    ("domain", "record", "code"),
    [
        ("a..example.com", "_acme-challenge", "invalid_name"),
        (".example.com", "_acme-challenge", "invalid_name"),
        ("*.*.example.com", "_acme-challenge", "invalid_name"),
        ("www.*.example.com", "_acme-challenge", "invalid_name"),
        ("foo_bar.example.com", "_acme-challenge", "invalid_name"),
        ("-bad.example.com", "_acme-challenge", "invalid_name"),
        ("ab--cd.example.com", "_acme-challenge", "invalid_name"),
        ("xn--zz.example.com", "_acme-challenge", "invalid_name"),
        ("exa mple.com", "_acme-challenge", "invalid_name"),
        ("a" * 64 + ".com", "_acme-challenge", "invalid_name"),
        (".".join(["abcdefghi"] * 26), "_acme-challenge", "invalid_name"),
        ("", "_acme-challenge", "invalid_name"),
        ("example.com", "", "invalid_name"),
        ("example.com", "www", "invalid_record_name"),
        ("example.com", "_acme-challenge.other.com", "invalid_record_name"),
        ("example.com", "_acme-challenge.example.com.evil.com.", "invalid_record_name"),
        ("www.example.com", "_acme-challenge.example.com.", "invalid_record_name"),
        ("www.example.com", "_acme-challenge.www", "invalid_record_name"),
        ("example.com", "_dnsauth", "invalid_record_name"),
    ],
)
def test_rejected_names(domain: str, record: str, code: str) -> None:
    with pytest.raises(BadRequest) as caught:
        challenge_record_name(domain, record)
    assert caught.value.code == code
    assert caught.value.status == 400


@pytest.mark.parametrize("wildcard", [False, True])
def test_the_challenge_name_itself_must_fit_in_253_octets(wildcard: bool) -> None:
    """`_acme-challenge.` adds 16 octets: a domain of 238 is valid, its record name not."""
    prefix = "*." if wildcard else ""
    fits = long_domain(253 - 16)
    assert len(challenge_record_name(prefix + fits, "_acme-challenge")[1]) == 253
    for length in (253 - 15, 240, 253):
        with pytest.raises(InvalidName) as caught:
            challenge_record_name(prefix + long_domain(length), "_acme-challenge")
        assert (caught.value.status, caught.value.code) == (400, "invalid_name")


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        ["x"],
        "short",
        "A" * 42,
        "A" * 44,
        "A" * 42 + "=",
        "A" * 42 + "+",
        "A" * 42 + "/",
        "A" * 42 + " ",
        "A" * 42 + "\n",
    ],
)
def test_rejected_values(value: object) -> None:
    with pytest.raises(BadRequest) as caught:
        check_challenge_value(value)
    assert caught.value.code == "invalid_value"


def test_accepted_value_keeps_dash_and_underscore() -> None:
    value = "ab-_" + "x" * 39
    assert check_challenge_value(value) == value


@pytest.mark.parametrize(
    ("fqdn", "zones", "expected"),
    [
        ("_acme-challenge.www.example.com", ["example.com"], "example.com"),
        ("_acme-challenge.www.example.com", ["example.com", "www.example.com"], "www.example.com"),
        (
            "_acme-challenge.example.com",
            ["_acme-challenge.example.com", "example.com"],
            "_acme-challenge.example.com",
        ),
        ("_acme-challenge.badexample.com", ["example.com"], None),
        ("_acme-challenge.example.com.evil", ["example.com"], None),
    ],
)
def test_longest_zone(fqdn: str, zones: list[str], expected: str | None) -> None:
    assert longest_zone(fqdn, zones) == expected


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True).filter(
    lambda s: s[2:4] != "--"
)


@given(st.lists(_label, min_size=1, max_size=5), st.booleans(), st.booleans())
def test_canonical_form_is_a_fixed_point(labels: list[str], upper: bool, dot: bool) -> None:
    name = ".".join(labels)
    text = (name.upper() if upper else name) + ("." if dot else "")
    canonical = canonical_name(text)
    assert canonical == name
    assert canonical_name(canonical) == canonical


@given(st.text(max_size=80))
def test_arbitrary_text_is_canonical_or_rejected(text: str) -> None:
    try:
        name = canonical_name(text)
    except InvalidName:
        return
    assert name == name.lower() and name.isascii() and not name.endswith(".")
    assert canonical_name(name) == name
