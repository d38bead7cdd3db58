"""Server-made ids: UUIDv7, time-ordered so that indexes on them stay append-mostly."""

from __future__ import annotations

import uuid6


def new_id() -> str:
    return str(uuid6.uuid7())
