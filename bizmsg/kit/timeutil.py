"""Conversions between aware UTC datetimes and protobuf Timestamp / Duration."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def utc(dt: datetime) -> datetime:
    """An aware UTC datetime; naive values are taken to be UTC already."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_timestamp(dt: datetime | None) -> Timestamp:
    """What Timestamp.FromDatetime gives, by integer arithmetic on the time since the epoch:
    FromDatetime goes through utctimetuple and calendar.timegm in Python (py-spy: 1 % of
    delivery's loop, for the one timestamp of a SendMessage answer)."""
    if dt is None:
        return Timestamp()
    since = (dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt) - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


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
