"""Status events of moved messages, numbered per sender.

Every status change locks the senders' rows first (store.lock_senders), then moves
the messages with a compare-and-set (store.move_statuses), then records here: one event per
moved message numbered on from the sender's locked last_seq, the new last_seq, and the
outbox rows the change needs, each kind of row in one statement. So a state only moves
forward, a repeat is a no-op, and a sender's event sequence has no gaps in commit order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from delivery_svc import store


async def record_moves(
    conn: AsyncConnection,
    seqs: Mapping[str, int],
    moved: Sequence[store.Record],
    status: int,
    now: datetime,
    *,
    reason: str = "",
    outbox: Callable[[store.Record], dict[str, Any] | None] | None = None,
) -> set[str]:
    """Appends the events of `moved` (rows with message_id, sender, recipient,
    authorization_id); returns the senders whose feeds changed."""
    last = dict(seqs)
    events: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for m in moved:
        last[m.sender] += 1
        events.append(
            {
                "sender": m.sender,
                "seq": last[m.sender],
                "message_id": m.message_id,
                "recipient": m.recipient,
                "status": status,
                "event_time": now,
                "reason": reason,
            }
        )
        row = outbox(m) if outbox else None
        if row is not None:
            rows.append(row)
    changed = {m.sender for m in moved}
    await store.add_events(conn, events)
    await store.set_last_seq(conn, {s: last[s] for s in changed})
    await store.add_outbox(conn, rows)
    return changed
