"""to_timestamp gives exactly what protobuf's Timestamp.FromDatetime gives, for aware UTC,
other offsets, naive (taken as UTC), pre-epoch and extreme datetimes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from bizmsg.kit.timeutil import from_timestamp, to_timestamp, utc


def _reference(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(utc(dt))
    return ts


def test_to_timestamp_matches_from_datetime() -> None:
    rng = random.Random(7)
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), None]
    cases = [
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 3, 8, 0, 0, 123_456),  # naive: UTC
    ]
    for _ in range(2000):
        seconds = rng.randint(-2_000_000_000, 4_000_000_000)
        moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(
            seconds=seconds, microseconds=rng.randint(0, 999_999)
        )
        zone = rng.choice(zones)
        cases.append(moment.replace(tzinfo=None) if zone is None else moment.astimezone(zone))
    for dt in cases:
        assert to_timestamp(dt) == _reference(dt), dt
        assert from_timestamp(to_timestamp(dt)) in (None, utc(dt))
    assert to_timestamp(None) == Timestamp()
