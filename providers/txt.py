"""TXT values as providers spell them: the one place that quotes and unquotes.

APIs hand TXT data back in presentation form: one or more character strings, quoted,
with `\\X` and `\\DDD` escapes. A value longer than 255 bytes must be split into several
strings, and any tool may split a shorter one, so a value is the concatenation of its
strings. `\\DDD` is decimal in RFC 1035 (Cloud DNS, Cloudflare, CIS) but octal in
Route 53. APIs that keep one record per value (Cloudflare, CIS) store content as they
were given it: a record another tool wrote without quotes is its value as it stands.
"""

from __future__ import annotations

import re

# A quoted string, or a run of unquoted, unescaped-space-free characters.
_TOKEN = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|((?:[^\s"\\]|\\.)+))', re.DOTALL)
_ESCAPE = re.compile(r"\\(\d{3}|.)", re.DOTALL)


def quote(value: str) -> str:
    """`value` as one quoted string (the APIs split long ones themselves)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def unescape(text: str, *, base: int = 10) -> str:
    """Resolve `\\X` and `\\DDD` (a byte, in `base`); bytes are read as UTF-8."""
    out = bytearray()
    position = 0
    for match in _ESCAPE.finditer(text):
        out += text[position : match.start()].encode()
        code = match.group(1)
        out += bytes([int(code, base) & 0xFF]) if code.isdigit() else code.encode()
        position = match.end()
    out += text[position:].encode()
    return out.decode(errors="replace")


def unquote(content: str, *, base: int = 10) -> str:
    """TXT content as an API returns it -> its value.

    Quoted content is the concatenation of its strings, escapes resolved; content that
    does not start with a quote, or does not parse, is taken as it stands.
    """
    if not content.lstrip().startswith('"'):
        return content
    strings = []
    position = 0
    while position < len(content.rstrip()):
        match = _TOKEN.match(content, position)
        if match is None or match.end() == position:
            return content  # not presentation form after all (an unbalanced quote)
        quoted, bare = match.groups()
        strings.append(unescape(quoted if quoted is not None else bare, base=base))
        position = match.end()
    return "".join(strings)
