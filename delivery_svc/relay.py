"""Background work: the outbox relay (capture, void, business reply) and the expiry sweep.

Outbox rows are leased (next_attempt_time moved ahead) before their call, so replicas do
not send the same row at once, and a crashed worker's rows come back after the lease.
Each call is idempotent at the other end (its request_id is derived from the message id),
so a row sent twice has one effect. Transient failures back off and retry until they land.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import grpc

from bizmsg.billing.v1 import billing_pb2
from bizmsg.kit.clock import Clock
from bizmsg.kit.storage import Database
from delivery_svc import store
from delivery_svc.dependencies import Dependencies, is_retryable
from delivery_svc.models import OutboxItem
from delivery_svc.notify import Notifier, status_key
from delivery_svc.policy import Status, minute_window

log = logging.getLogger("delivery.relay")
LEASE = timedelta(seconds=30)
MAX_BACKOFF_SECONDS = 60.0
BATCH = 100


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(attempts, 10)))


class Relay:
    def __init__(self, db: Database, clock: Clock, deps: Dependencies, notifier: Notifier) -> None:
        self.db = db
        self.clock = clock
        self.deps = deps
        self.notifier = notifier

    async def _call(self, item: OutboxItem) -> None:
        p = json.loads(item.payload)
        if item.kind == "CAPTURE":
            await self.deps.capture(f"capture-{p['message_id']}", p["authorization_id"])
        elif item.kind == "VOID":
            await self.deps.void(f"void-{p['message_id']}", p["authorization_id"], int(p["reason"]))
        elif item.kind == "BUSINESS_REPLY":
            await self.deps.record_business_reply(
                f"reply-{p['message_id']}", p["business_id"], p["person_id"]
            )
        else:
            raise ValueError(f"unknown outbox kind {item.kind!r}")

    async def relay_outbox(self) -> int:
        """Sends what is due; returns how many rows landed."""
        now = self.clock.now()
        async with self.db.write() as s:
            items = await store.claim_outbox(s, now, now + LEASE, BATCH)
        landed = 0
        for item in items:
            try:
                await self._call(item)
            except grpc.aio.AioRpcError as e:
                if is_retryable(e):
                    async with self.db.write() as s:
                        await store.retry_outbox(
                            s,
                            item.id,
                            item.attempts + 1,
                            self.clock.now() + backoff(item.attempts),
                            f"{e.code().name}: {e.details()}",
                        )
                    continue
                # A final answer (e.g. the authorization was already resolved): nothing
                # more can be done by retrying; keep it in the log for an operator.
                log.error(
                    "outbox call refused for good",
                    extra={"fields": {"kind": item.kind, "code": e.code().name, "item": item.id}},
                )
            async with self.db.write() as s:
                await store.finish_outbox(s, item.id)
            landed += 1
        return landed

    async def expire_due(self) -> int:
        """ACCEPTED messages past their TTL: EXPIRED, ciphertext deleted, charge voided."""
        now = self.clock.now()
        async with self.db.read() as s:
            due = await store.due_for_expiry(s, Status.MESSAGE_STATUS_ACCEPTED, now, BATCH)
        expired = 0
        for message_id in due:
            async with self.db.write() as s:
                found = await store.get_messages(s, [message_id])
                if not found:
                    continue
                message = found[0]
                sender = await store.lock_sender(s, message.sender)
                if not await store.move_status(
                    s,
                    message_id,
                    Status.MESSAGE_STATUS_ACCEPTED,
                    Status.MESSAGE_STATUS_EXPIRED,
                    now,
                ):
                    continue
                await store.delete_all_envelopes(s, message_id)
                await store.append_event(s, sender, message, Status.MESSAGE_STATUS_EXPIRED, now)
                if message.authorization_id:
                    store.add_outbox(
                        s,
                        "VOID",
                        {
                            "message_id": message_id,
                            "authorization_id": message.authorization_id,
                            "reason": str(billing_pb2.VOID_REASON_EXPIRED),
                        },
                        now,
                    )
            expired += 1
            self.notifier.notify(status_key(message.sender))
        async with self.db.write() as s:
            await store.delete_expired_envelopes(s, now)
            # Rate counters older than the longest window (a minute) count nothing any more.
            await store.drop_counters_before(s, minute_window(now.timestamp()) - 60)
        return expired
