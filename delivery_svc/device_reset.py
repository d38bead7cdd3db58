"""When a device re-registers with a new identity key, its waiting ciphertext is lost.

Envelopes were encrypted on sessions with the device's old identity key; the new keys can
never decrypt them, so they are deleted. A message left with no envelope for any device and
not yet delivered can never be delivered: it is FAILED (reason RECIPIENT_DEVICE_RESET) and
its charge voided from the outbox. The sender's SDK sees the FAILED event, fetches the new
bundle and may send again. A message that still has an envelope for another of the
recipient's devices stays ACCEPTED.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.billing.v1 import billing_pb2
from delivery_svc import store
from delivery_svc.policy import Status
from delivery_svc.statuses import record_moves

REASON = "RECIPIENT_DEVICE_RESET"


async def fail_lost_messages(
    session: AsyncSession, owner: str, device_id: str, now: datetime
) -> set[str]:
    """Drops the device's envelopes and fails the messages left with none; returns the
    senders whose status feeds changed. Runs in the caller's write transaction."""
    conn = await session.connection()
    messages = await store.waiting_messages(conn, owner, device_id, None)
    if not messages:
        return set()
    # Senders first, in sorted order, then envelopes: the order acks and expiry lock in.
    seqs = await store.lock_senders(conn, (m.sender for m in messages))
    await store.delete_envelopes(conn, owner, device_id, None)
    ids = [m.message_id for m in messages]
    still_waiting = await store.messages_with_envelopes(conn, ids)
    moved = await store.move_statuses(
        conn,
        [i for i in ids if i not in still_waiting],
        Status.MESSAGE_STATUS_ACCEPTED,
        Status.MESSAGE_STATUS_FAILED,
        now,
    )
    return await record_moves(
        conn,
        seqs,
        [m for m in messages if m.message_id in moved],
        Status.MESSAGE_STATUS_FAILED,
        now,
        reason=REASON,
        outbox=lambda m: (
            store.outbox_row(
                "VOID",
                {
                    "message_id": m.message_id,
                    "authorization_id": m.authorization_id,
                    "reason": str(billing_pb2.VOID_REASON_FAILED),
                },
                now,
            )
            if m.authorization_id
            else None
        ),
    )
