"""Opt-in categories as bit masks, so one row holds a person's consent for all of them."""

from __future__ import annotations

from collections.abc import Iterable

from bizmsg.common.v1 import common_pb2

OPT_IN_CATEGORIES: tuple[common_pb2.Category.ValueType, ...] = (
    common_pb2.CATEGORY_MARKETING,
    common_pb2.CATEGORY_UTILITY,
    common_pb2.CATEGORY_AUTHENTICATION,
)
ALL_BITS = 0b111


def bit(category: int) -> int:
    """The mask bit of an opt-in category (SERVICE has none: it needs a window instead)."""
    if category not in OPT_IN_CATEGORIES:
        raise ValueError(f"category {category} takes no opt-in")
    return 1 << (category - 1)


def mask(categories: Iterable[int]) -> int:
    result = 0
    for c in categories:
        result |= bit(c)
    return result


def categories(bits: int) -> list[common_pb2.Category.ValueType]:
    return [c for c in OPT_IN_CATEGORIES if bits & bit(c)]


def names(bits: int) -> list[str]:
    return [
        common_pb2.Category.Name(common_pb2.Category.ValueType(c)).removeprefix("CATEGORY_")
        for c in categories(bits)
    ]
