"""Receiving side: mailbox streams, acks (DELIVERED + capture), reads, and status feeds.

Every status change locks the senders' rows first, then moves the messages with a
compare-and-set, then records the events (see statuses.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import FailedPrecondition, NotFound
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import to_timestamp
from delivery_svc import store
from delivery_svc.notify import Notifier, mailbox_key, status_key
from delivery_svc.policy import Status, status_name
from delivery_svc.statuses import record_moves

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
            await self._require_device(await s.connection(), owner, device_id)

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
                        await s.connection(), str(owner), device_id, self.clock.now(), MAILBOX_BATCH
                    )
                waiting = {r.message_id for r in rows}
                sent &= waiting  # acked ones are gone for good; keeps the set small
                fresh = [r for r in rows if r.message_id not in sent]
                for row in fresh:
                    sent.add(row.message_id)
                    yield _incoming(row)
                if not fresh:
                    if not follow:
                        return
                    await self._wait(event)

    async def ack(
        self, session: AsyncSession, owner: Principal, device_id: str, message_ids: Sequence[str]
    ) -> tuple[delivery_pb2.AckMessagesResponse, set[str]]:
        """Deletes the device's envelopes; the first ack of a message makes it DELIVERED and
        queues its capture. Returns the response and the senders whose feeds changed.
        Statements: the waiting messages, their senders locked, envelopes deleted (RETURNING),
        statuses moved (RETURNING), events, sequence numbers, outbox rows."""
        conn = await session.connection()
        waiting = await store.waiting_messages(conn, str(owner), device_id, message_ids)
        if not waiting:
            # Nothing of these is waiting for the device: an unknown device is an error;
            # otherwise they were acked before (or never sent to it).
            await self._require_device(conn, owner, device_id)
            return delivery_pb2.AckMessagesResponse(acknowledged_count=0), set()
        # Senders first (sorted), then envelopes and messages: the order every writer locks in.
        seqs = await store.lock_senders(conn, (m.sender for m in waiting))
        deleted = await store.delete_envelopes(
            conn, str(owner), device_id, [m.message_id for m in waiting]
        )
        now = self.clock.now()
        moved = await store.move_statuses(
            conn,
            deleted,
            Status.MESSAGE_STATUS_ACCEPTED,
            Status.MESSAGE_STATUS_DELIVERED,
            now,
        )
        changed = await record_moves(
            conn,
            seqs,
            [m for m in waiting if m.message_id in moved],
            Status.MESSAGE_STATUS_DELIVERED,
            now,
            outbox=lambda m: (
                store.outbox_row(
                    "CAPTURE",
                    {"message_id": m.message_id, "authorization_id": m.authorization_id},
                    now,
                )
                if m.authorization_id
                else None
            ),
        )
        return delivery_pb2.AckMessagesResponse(acknowledged_count=len(deleted)), changed

    async def mark_read(
        self, session: AsyncSession, owner: Principal, message_ids: Sequence[str]
    ) -> tuple[delivery_pb2.MarkReadResponse, set[str]]:
        """Moves delivered messages sent to `owner` to READ; nothing changes if any id is
        unknown to the caller or not delivered yet."""
        conn = await session.connection()
        messages = await store.get_messages(conn, message_ids)
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
        delivered = [m for m in mine.values() if m.status == Status.MESSAGE_STATUS_DELIVERED]
        if not delivered:
            return delivery_pb2.MarkReadResponse(read_count=0), set()
        seqs = await store.lock_senders(conn, (m.sender for m in delivered))
        now = self.clock.now()
        moved = await store.move_statuses(
            conn,
            [m.message_id for m in delivered],
            Status.MESSAGE_STATUS_DELIVERED,
            Status.MESSAGE_STATUS_READ,
            now,
        )
        changed = await record_moves(
            conn,
            seqs,
            [m for m in delivered if m.message_id in moved],
            Status.MESSAGE_STATUS_READ,
            now,
        )
        return delivery_pb2.MarkReadResponse(read_count=len(moved)), changed

    async def _require_device(
        self, conn: AsyncConnection, owner: Principal, device_id: str
    ) -> None:
        if not await store.device_exists(conn, str(owner), device_id):
            raise NotFound(
                "DEVICE_NOT_FOUND",
                f"{owner} has no device {device_id!r}; publish its keys first",
                resource_type="device",
                resource_name=f"{owner}/{device_id}",
            )

    async def statuses(
        self, sender: Principal, after_seq: int, message_id: str, follow: bool
    ) -> AsyncIterator[tuple[int, delivery_pb2.StreamStatusesResponse]]:
        seq = after_seq
        with self.notifier.watch(status_key(str(sender))) as event:
            while True:
                event.clear()
                async with self.db.read() as s:
                    events = await store.events_after(
                        await s.connection(), str(sender), seq, message_id, EVENTS_BATCH
                    )
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


def _incoming(row: store.Record) -> delivery_pb2.ReceiveMessagesResponse:
    out = delivery_pb2.ReceiveMessagesResponse(
        message_id=row.message_id,
        sender=row.sender,
        sender_device_id=row.sender_device_id,
        ciphertext=row.ciphertext,
        category=row.category,
        send_time=to_timestamp(row.send_time),
        expire_time=to_timestamp(row.expire_time),
    )
    if row.referral_click_id or row.referral_campaign_id:
        out.referral.CopyFrom(
            common_pb2.Referral(
                click_id=row.referral_click_id, campaign_id=row.referral_campaign_id
            )
        )
    return out
