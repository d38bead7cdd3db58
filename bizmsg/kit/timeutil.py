"""Conversions between aware UTC datetimes and protobuf Timestamp / Duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def utc(dt: datetime) -> datetime:
    """An aware UTC datetime; naive values are taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def to_timestamp(dt: datetime | None) -> Timestamp:
    ts = Timestamp()
    if dt is not None:
        ts.FromDatetime(utc(dt))
    return ts


def from_timestamp(ts: Timestamp) -> datetime | None:
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=UTC)


def to_duration(delta: timedelta) -> Duration:
    d = Duration()
    d.FromTimedelta(delta)
    return d


def from_duration(d: Duration) -> timedelta:
    return d.ToTimedelta()
