"""Input checks that collect every field violation, then raise one InvalidArgument."""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Collection
from typing import Any, Protocol

from bizmsg.kit.errors import InvalidArgument


class Validator:
    """Collects (field, description) pairs; `raise_if_any` turns them into one error."""

    def __init__(self) -> None:
        self.violations: list[tuple[str, str]] = []

    def add(self, field: str, description: str) -> None:
        self.violations.append((field, description))

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def raise_if_any(self, message: str = "invalid request") -> None:
        if self.violations:
            raise InvalidArgument(self.violations, message)


def is_token(value: str) -> bool:
    """Printable, with no whitespace. Every whitespace character but the ASCII space is
    unprintable, so after isprintable() only " " is left to look for (checked over all code
    points in the tests): 0.2 against 2.1 us for a request id, tested char by char."""
    return value.isprintable() and " " not in value


def check_id(
    v: Validator, field: str, value: str, *, required: bool = True, max_len: int = 128
) -> None:
    if not value:
        if required:
            v.add(field, "is required")
        return
    # Messages are made only for a violation: every call checks a few ids.
    if len(value) > max_len:
        v.add(field, f"must be at most {max_len} characters")
    if not is_token(value):
        v.add(field, "must be printable with no whitespace")


def check_request_id(v: Validator, value: str) -> None:
    check_id(v, "request_id", value)


def check_text(
    v: Validator, field: str, value: str, *, required: bool = False, max_len: int = 1000
) -> None:
    if not value:
        if required:
            v.add(field, "is required")
        return
    if len(value) > max_len:
        v.add(field, f"must be at most {max_len} characters")


class _EnumType(Protocol):
    def values(self) -> list[int]: ...


@functools.cache
def _known_values(enum_type: Any) -> frozenset[int]:
    # EnumTypeWrapper.values() builds a new list on every call; an enum's values never change.
    return frozenset(enum_type.values())


def check_enum(
    v: Validator,
    field: str,
    value: int,
    enum_type: Any,
    *,
    allowed: Collection[int] | None = None,
) -> None:
    """Reject the zero value, values the enum does not know, and values not in `allowed`."""
    if value == 0:
        v.add(field, "is required")
    elif value not in _known_values(enum_type):
        v.add(field, f"unknown value {value}")
    elif allowed is not None and value not in allowed:
        v.add(field, f"{enum_type.Name(value)} is not allowed here")


def page_size(v: Validator, value: int, *, default: int = 50, maximum: int = 1000) -> int:
    """AIP-158: 0 means the default; larger than the maximum is clamped; negative is an error."""
    if value < 0:
        v.add("page_size", "must not be negative")
        return default
    return min(value or default, maximum)


class PageToken:
    """Opaque page tokens: base64url of a small JSON object the server wrote."""

    @staticmethod
    def encode(state: dict[str, Any]) -> str:
        raw = json.dumps(state, separators=(",", ":"), sort_keys=True).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @staticmethod
    def decode(v: Validator, field: str, token: str) -> dict[str, Any]:
        if not token:
            return {}
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            state = json.loads(raw)
        except (binascii.Error, ValueError):
            v.add(field, "is not a page token this service issued")
            return {}
        if not isinstance(state, dict):
            v.add(field, "is not a page token this service issued")
            return {}
        return state
