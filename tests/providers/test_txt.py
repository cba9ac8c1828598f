"""The one TXT quoting helper: what every adapter reads and writes through."""

from __future__ import annotations

import pytest

from providers.txt import quote, unescape, unquote


@pytest.mark.parametrize("value", ["plain", 'with "quotes"', "back\\slash", "", "a b", "ü"])
def test_quote_and_unquote_round_trip(value: str) -> None:
    assert unquote(quote(value)) == value


def test_quote_escapes_quotes_and_backslashes() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'


@pytest.mark.parametrize(
    ("content", "value"),
    [
        ('"abc" "def"', "abcdef"),  # a value in several strings: their concatenation
        ('"abc""def"', "abcdef"),
        ('  "abc"   "def"  ', "abcdef"),
        ('"a b" "c"', "a bc"),
        ('"abc" def', "abcdef"),  # an unquoted string among quoted ones
        ('"a\\059b"', "a;b"),  # \DDD: decimal, as RFC 1035 has it
        ('"say \\"hi\\" \\092o/"', 'say "hi" \\o/'),
        ('"\\195\\188"', "ü"),  # bytes, read as UTF-8
        ("unquoted", "unquoted"),  # a record written without quotes: as it stands
        ('unquoted "inner"', 'unquoted "inner"'),
        ('"unbalanced', '"unbalanced'),
    ],
)
def test_unquote(content: str, value: str) -> None:
    assert unquote(content) == value


def test_numeric_escapes_in_the_providers_base() -> None:
    assert unescape("\\052.example.com", base=8) == "*.example.com"  # Route 53: octal
    assert unescape("\\042") == "*"  # RFC 1035: decimal
    assert unquote('"a\\073b"', base=8) == "a;b"
    assert unquote('"x" "a\\073b"', base=8) == "xa;b"
