"""Input checks shared by the RPCs: money, currencies, countries, principals, times."""

from __future__ import annotations

import re
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from billing_svc.ledger import INT64_MAX
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.validation import Validator

_CURRENCY = re.compile(r"[A-Z]{3}")
_COUNTRY = re.compile(r"[A-Z]{2}")
# Largest timestamp protobuf accepts (9999-12-31T23:59:59Z).
_MAX_SECONDS = 253402300799


def currency(v: Validator, field: str, value: str) -> None:
    if not value:
        v.add(field, "is required")
    else:
        v.check(bool(_CURRENCY.fullmatch(value)), field, "must be an ISO 4217 code like EUR")


def country(v: Validator, field: str, value: str, *, allow_empty: bool = False) -> None:
    if not value:
        if not allow_empty:
            v.add(field, "is required")
        return
    v.check(bool(_COUNTRY.fullmatch(value)), field, "must be an ISO 3166-1 alpha-2 code like DE")


def amount(
    v: Validator, field: str, m: common_pb2.Money, *, positive: bool = True, required: bool = True
) -> None:
    currency(v, f"{field}.currency_code", m.currency_code)
    if positive:
        v.check(m.amount_micros > 0, f"{field}.amount_micros", "must be positive")
    else:
        v.check(m.amount_micros >= 0, f"{field}.amount_micros", "must not be negative")
    v.check(m.amount_micros <= INT64_MAX, f"{field}.amount_micros", "must fit in int64")


def principal(v: Validator, field: str, value: str) -> Principal | None:
    if value == "platform":
        return Principal("platform", "")
    try:
        return Principal.parse(value)
    except ValueError:
        v.add(field, "must be a principal like business:acme, advertiser:acme or platform")
        return None


def timestamp(v: Validator, field: str, ts: Timestamp) -> None:
    v.check(0 <= ts.seconds <= _MAX_SECONDS, field, "is out of range")
    v.check(0 <= ts.nanos < 1_000_000_000, field, "has invalid nanos")


def period(v: Validator, start: datetime | None, end: datetime | None) -> None:
    if start is not None and end is not None:
        v.check(start < end, "end_time", "must be after start_time")
