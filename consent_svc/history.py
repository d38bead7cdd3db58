"""The tamper-evident history: each event's hash covers the hash of the event before.

hash = SHA-256(prev_hash || canonical JSON of {event_id, event_time, event_type, history_id,
payload_digest, sequence}), payload_digest = SHA-256 of the stored (sealed) payload. The chain
covers the ciphertext, not the plaintext, so it still verifies after the person's key is gone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from bizmsg.kit.timeutil import utc

GENESIS = bytes(32)


def digest(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def _time(dt: datetime) -> str:
    return utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(
    prev_hash: bytes,
    *,
    history_id: str,
    sequence: int,
    event_id: str,
    event_type: int,
    event_time: datetime,
    payload_digest: bytes,
) -> bytes:
    header = {
        "event_id": event_id,
        "event_time": _time(event_time),
        "event_type": event_type,
        "history_id": history_id,
        "payload_digest": payload_digest.hex(),
        "sequence": sequence,
    }
    canonical = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(prev_hash + canonical).digest()


@dataclass(frozen=True)
class StoredEvent:
    history_id: str
    sequence: int
    event_id: str
    event_type: int
    event_time: datetime
    payload: bytes
    prev_hash: bytes
    hash: bytes


@dataclass(frozen=True)
class Verification:
    valid: bool
    event_count: int
    first_invalid_sequence: int
    head_hash: bytes


def verify(events: Iterable[StoredEvent], *, head_sequence: int, head_hash: bytes) -> Verification:
    """Walk the chain in order; the first event that breaks it, or a head that does not match
    the last event (a truncated history), makes it invalid."""
    prev, expected_seq, count = GENESIS, 1, 0
    for e in events:
        count += 1
        recomputed = event_hash(
            prev,
            history_id=e.history_id,
            sequence=e.sequence,
            event_id=e.event_id,
            event_type=e.event_type,
            event_time=e.event_time,
            payload_digest=digest(e.payload),
        )
        if e.sequence != expected_seq or e.prev_hash != prev or e.hash != recomputed:
            return Verification(False, count, expected_seq, prev)
        prev, expected_seq = e.hash, expected_seq + 1
    if expected_seq - 1 != head_sequence or prev != head_hash:
        return Verification(False, count, expected_seq, prev)
    return Verification(True, count, 0, prev)
