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

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.billing.v1 import billing_pb2
from delivery_svc import store
from delivery_svc.models import Envelope
from delivery_svc.policy import Status

REASON = "RECIPIENT_DEVICE_RESET"


async def fail_lost_messages(
    session: AsyncSession, owner: str, device_id: str, now: datetime
) -> set[str]:
    """Drops the device's envelopes and fails the messages left with none; returns the
    senders whose status feeds changed. Runs in the caller's write transaction."""
    waiting = select(Envelope.message_id).where(
        Envelope.recipient == owner, Envelope.device_id == device_id
    )
    messages = await store.get_messages(
        session, [str(m) for m in (await session.scalars(waiting)).all()]
    )
    if not messages:
        return set()
    # Senders first, in sorted order, then envelopes: the order acks and expiry lock in.
    locked = {x: await store.lock_sender(session, x) for x in sorted({m.sender for m in messages})}
    await session.execute(
        delete(Envelope).where(Envelope.recipient == owner, Envelope.device_id == device_id)
    )
    ids = [m.message_id for m in messages]
    still_waiting = set(
        (
            await session.scalars(
                select(Envelope.message_id).where(Envelope.message_id.in_(ids)).distinct()
            )
        ).all()
    )
    changed: set[str] = set()
    for message in messages:
        if message.message_id in still_waiting or not await store.move_status(
            session,
            message.message_id,
            Status.MESSAGE_STATUS_ACCEPTED,
            Status.MESSAGE_STATUS_FAILED,
            now,
        ):
            continue
        await store.append_event(
            session, locked[message.sender], message, Status.MESSAGE_STATUS_FAILED, now, REASON
        )
        changed.add(message.sender)
        if message.authorization_id:
            store.add_outbox(
                session,
                "VOID",
                {
                    "message_id": message.message_id,
                    "authorization_id": message.authorization_id,
                    "reason": str(billing_pb2.VOID_REASON_FAILED),
                },
                now,
            )
    return changed
