"""Receiving side: mailbox streams, acks (DELIVERED + capture), reads, and status feeds.

Every status change locks the sender's row first (store.lock_sender), then moves the
message with a compare-and-set, so a state only moves forward, a repeat is a no-op, and
the sender's event sequence has no gaps in commit order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import FailedPrecondition, NotFound
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import to_timestamp
from delivery_svc import store
from delivery_svc.models import Envelope, Message
from delivery_svc.notify import Notifier, mailbox_key, status_key
from delivery_svc.policy import Status, status_name

# Envelopes read per poll of a mailbox; a device acks to make room for more.
MAILBOX_BATCH = 1000
EVENTS_BATCH = 500


class Mailbox:
    def __init__(
        self, db: Database, clock: Clock, notifier: Notifier, poll_interval: float
    ) -> None:
        self.db = db
        self.clock = clock
        self.notifier = notifier
        self.poll_interval = poll_interval

    async def require_device(self, owner: Principal, device_id: str) -> None:
        async with self.db.read() as s:
            if await store.get_device(s, str(owner), device_id) is None:
                raise NotFound(
                    "DEVICE_NOT_FOUND",
                    f"{owner} has no device {device_id!r}; publish its keys first",
                    resource_type="device",
                    resource_name=f"{owner}/{device_id}",
                )

    async def _wait(self, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.poll_interval)

    async def receive(
        self, owner: Principal, device_id: str, follow: bool
    ) -> AsyncIterator[delivery_pb2.ReceiveMessagesResponse]:
        await self.require_device(owner, device_id)
        # Message ids, not envelope ids: SQLite reuses the rowid of a deleted (acked) last
        # row, so a new envelope may carry the id of one this stream already sent.
        sent: set[str] = set()
        with self.notifier.watch(mailbox_key(str(owner), device_id)) as event:
            while True:
                event.clear()
                async with self.db.read() as s:
                    rows = await store.mailbox(
                        s, str(owner), device_id, self.clock.now(), MAILBOX_BATCH
                    )
                waiting = {m.message_id for _, m in rows}
                sent &= waiting  # acked ones are gone for good; keeps the set small
                fresh = [(e, m) for e, m in rows if m.message_id not in sent]
                for envelope, message in fresh:
                    sent.add(message.message_id)
                    yield _incoming(envelope, message)
                if not fresh:
                    if not follow:
                        return
                    await self._wait(event)

    async def ack(
        self, session: AsyncSession, owner: Principal, device_id: str, message_ids: Sequence[str]
    ) -> tuple[delivery_pb2.AckMessagesResponse, set[str]]:
        """Deletes the device's envelopes; the first ack of a message makes it DELIVERED and
        queues its capture. Returns the response and the senders whose feeds changed."""
        q = (
            select(Message.sender)
            .join(Envelope, Envelope.message_id == Message.message_id)
            .where(
                Envelope.recipient == str(owner),
                Envelope.device_id == device_id,
                Envelope.message_id.in_(list(message_ids)),
            )
            .distinct()
        )
        senders = {str(x) for x in (await session.scalars(q)).all()}
        locked = {x: await store.lock_sender(session, x) for x in sorted(senders)}
        deleted = await store.delete_envelopes(session, str(owner), device_id, message_ids)
        now = self.clock.now()
        changed: set[str] = set()
        for message in await store.get_messages(session, deleted):
            if message.sender not in locked:
                continue
            moved = await store.move_status(
                session,
                message.message_id,
                Status.MESSAGE_STATUS_ACCEPTED,
                Status.MESSAGE_STATUS_DELIVERED,
                now,
            )
            if not moved:
                continue
            await store.append_event(
                session, locked[message.sender], message, Status.MESSAGE_STATUS_DELIVERED, now
            )
            changed.add(message.sender)
            if message.authorization_id:
                store.add_outbox(
                    session,
                    "CAPTURE",
                    {
                        "message_id": message.message_id,
                        "authorization_id": message.authorization_id,
                    },
                    now,
                )
        return delivery_pb2.AckMessagesResponse(acknowledged_count=len(deleted)), changed

    async def mark_read(
        self, session: AsyncSession, owner: Principal, message_ids: Sequence[str]
    ) -> tuple[delivery_pb2.MarkReadResponse, set[str]]:
        """Moves delivered messages sent to `owner` to READ; nothing changes if any id is
        unknown to the caller or not delivered yet."""
        messages = await store.get_messages(session, message_ids)
        mine = {m.message_id: m for m in messages if m.recipient == str(owner)}
        unknown = [i for i in message_ids if i not in mine]
        if unknown:
            raise NotFound(
                "MESSAGE_NOT_FOUND",
                f"no message {unknown[0]!r} was sent to {owner}",
                resource_type="message",
                resource_name=unknown[0],
            )
        undelivered = [
            m
            for m in mine.values()
            if m.status not in (Status.MESSAGE_STATUS_DELIVERED, Status.MESSAGE_STATUS_READ)
        ]
        if undelivered:
            m = undelivered[0]
            raise FailedPrecondition(
                "MESSAGE_NOT_DELIVERED",
                f"message {m.message_id} is {status_name(m.status)}; acknowledge it first",
                violations=[("MESSAGE_NOT_DELIVERED", m.message_id, status_name(m.status))],
            )
        senders = sorted({m.sender for m in mine.values()})
        locked = {x: await store.lock_sender(session, x) for x in senders}
        now = self.clock.now()
        changed: set[str] = set()
        count = 0
        for message in mine.values():
            if await store.move_status(
                session,
                message.message_id,
                Status.MESSAGE_STATUS_DELIVERED,
                Status.MESSAGE_STATUS_READ,
                now,
            ):
                await store.append_event(
                    session, locked[message.sender], message, Status.MESSAGE_STATUS_READ, now
                )
                changed.add(message.sender)
                count += 1
        return delivery_pb2.MarkReadResponse(read_count=count), changed

    async def statuses(
        self, sender: Principal, after_seq: int, message_id: str, follow: bool
    ) -> AsyncIterator[tuple[int, delivery_pb2.StreamStatusesResponse]]:
        seq = after_seq
        with self.notifier.watch(status_key(str(sender))) as event:
            while True:
                event.clear()
                async with self.db.read() as s:
                    events = await store.events_after(s, str(sender), seq, message_id, EVENTS_BATCH)
                for e in events:
                    seq = e.seq
                    yield (
                        seq,
                        delivery_pb2.StreamStatusesResponse(
                            message_id=e.message_id,
                            recipient=e.recipient,
                            status=e.status,  # type: ignore[arg-type]
                            event_time=to_timestamp(e.event_time),
                            reason=e.reason,
                        ),
                    )
                if not events:
                    if not follow:
                        return
                    await self._wait(event)


def _incoming(envelope: Envelope, message: Message) -> delivery_pb2.ReceiveMessagesResponse:
    out = delivery_pb2.ReceiveMessagesResponse(
        message_id=message.message_id,
        sender=message.sender,
        sender_device_id=message.sender_device_id,
        ciphertext=envelope.ciphertext,
        category=message.category,  # type: ignore[arg-type]
        send_time=to_timestamp(message.send_time),
        expire_time=to_timestamp(message.expire_time),
    )
    if message.referral_click_id or message.referral_campaign_id:
        out.referral.CopyFrom(
            common_pb2.Referral(
                click_id=message.referral_click_id, campaign_id=message.referral_campaign_id
            )
        )
    return out
