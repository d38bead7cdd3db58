"""Ids and tokens: printable, with no whitespace."""

from __future__ import annotations

import sys

import pytest

from bizmsg.kit.auth import Principal
from bizmsg.kit.validation import Validator, check_id, is_token


def _by_each_char(value: str) -> bool:
    """The definition is_token must keep: printable, and no character is whitespace."""
    return value.isprintable() and not any(c.isspace() for c in value)


def test_is_token_agrees_with_the_char_by_char_check_on_every_code_point() -> None:
    for code in range(sys.maxunicode + 1):
        c = chr(code)
        for value in (c, f"a{c}b"):
            assert is_token(value) == _by_each_char(value), hex(code)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("019aee5f-7c1b-7c4e-9d2a-0e5f1a2b3c4d", True),
        ("bench-b00", True),
        ("a b", False),
        ("a\tb", False),
        ("a\u00a0b", False),  # no-break space
        ("a\u3000b", False),  # ideographic space
        ("a\u2028b", False),  # line separator
        ("a\x00b", False),
        ("été", True),
    ],
)
def test_ids_with_whitespace_or_control_characters_are_refused(value: str, ok: bool) -> None:
    v = Validator()
    check_id(v, "request_id", value)
    assert (v.violations == []) is ok
    if not ok:
        assert v.violations == [("request_id", "must be printable with no whitespace")]
        with pytest.raises(ValueError):
            Principal.parse(f"user:{value}")
    else:
        assert Principal.parse(f"user:{value}") == Principal("user", value)
