"""Background work: the outbox relay (capture, void, release, business reply) and the expiry
sweep.

The relay runs when a commit in this process added outbox rows (Notifier key OUTBOX) and
otherwise every interval, as a sweep for rows of other replicas, retries and leases that
ran out. An idle run costs one indexed read and takes no write lock.
Outbox rows are leased (next_attempt_time moved ahead, in one UPDATE ... RETURNING) before
their calls, so replicas do not send the same row at once, and a crashed worker's rows come
back after the lease. Each call is idempotent at the other end (its request_id is derived
from the message id), so a row sent twice has one effect. The calls of a batch run
concurrently; the rows that landed are deleted in one statement, transient failures back
off and retry until they land.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import timedelta

import grpc

from bizmsg.billing.v1 import billing_pb2
from bizmsg.kit.clock import Clock
from bizmsg.kit.storage import Database
from delivery_svc import store
from delivery_svc.dependencies import ChargeRequest, Dependencies, is_retryable
from delivery_svc.notify import OUTBOX, Notifier, status_key
from delivery_svc.policy import UNIQUE_PEOPLE_PERIOD, Status, hour_window, minute_window
from delivery_svc.statuses import record_moves

log = logging.getLogger("delivery.relay")
LEASE = timedelta(seconds=30)
MAX_BACKOFF_SECONDS = 60.0
BATCH = 100
# Outbox calls in flight at once (per relay run).
CONCURRENCY = 16


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** min(attempts, 10)))


class Relay:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        deps: Dependencies,
        notifier: Notifier,
        interval: float,
    ) -> None:
        self.db = db
        self.clock = clock
        self.deps = deps
        self.notifier = notifier
        self.interval = interval
        self._wake = notifier.subscribe(OUTBOX)
        self._calls = asyncio.Semaphore(CONCURRENCY)

    async def run(self) -> None:
        """One turn of the relay job: wait for a wake-up or the interval, then relay what is
        due (again at once while full batches come back)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.interval)
        self._wake.clear()
        while await self.relay_outbox() == BATCH:
            pass

    async def _call(self, item: store.Record) -> None:
        p = json.loads(item.payload)
        if item.kind == "CAPTURE":
            await self.deps.capture(f"capture-{p['message_id']}", p["authorization_id"])
        elif item.kind == "VOID":
            await self.deps.void(f"void-{p['message_id']}", p["authorization_id"], int(p["reason"]))
        elif item.kind == "RELEASE":
            await self.deps.release(ChargeRequest.from_payload(p))
        elif item.kind == "BUSINESS_REPLY":
            await self.deps.record_business_reply(
                f"reply-{p['message_id']}", p["business_id"], p["person_id"]
            )
        else:
            raise ValueError(f"unknown outbox kind {item.kind!r}")

    async def _attempt(self, item: store.Record) -> str | None:
        """None when the row is done with; the error when it should be retried."""
        async with self._calls:
            try:
                await self._call(item)
            except grpc.aio.AioRpcError as e:
                if is_retryable(e):
                    return f"{e.code().name}: {e.details()}"
                # A final answer (e.g. the authorization was already resolved): nothing
                # more can be done by retrying; keep it in the log for an operator.
                log.error(
                    "outbox call refused for good",
                    extra={"fields": {"kind": item.kind, "code": e.code().name, "item": item.id}},
                )
        return None

    async def relay_outbox(self) -> int:
        """Sends what is due; returns how many rows were claimed."""
        now = self.clock.now()
        async with self.db.read() as s:
            if not await store.outbox_due(await s.connection(), now):
                return 0
        async with self.db.write() as s:
            items = await store.claim_outbox(await s.connection(), now, now + LEASE, BATCH)
        if not items:
            return 0
        errors = await asyncio.gather(*(self._attempt(item) for item in items))
        retry_time = self.clock.now()
        async with self.db.write() as s:
            conn = await s.connection()
            await store.finish_outbox(
                conn, [item.id for item, error in zip(items, errors, strict=True) if error is None]
            )
            for item, error in zip(items, errors, strict=True):
                if error is not None:
                    await store.retry_outbox(
                        conn,
                        item.id,
                        item.attempts + 1,
                        retry_time + backoff(item.attempts),
                        error,
                    )
        return len(items)

    async def expire_due(self) -> int:
        """ACCEPTED messages past their TTL: EXPIRED, ciphertext deleted, charge voided (one
        write transaction per batch); then expired ciphertext and stale counters, only when
        an indexed read finds some."""
        now = self.clock.now()
        counters_before = minute_window(now.timestamp()) - 60  # a minute is the longest window
        # Hours the unique-people limit no longer sums (store.people_since).
        hours_before = hour_window((now - UNIQUE_PEOPLE_PERIOD).timestamp())
        async with self.db.read() as s:
            conn = await s.connection()
            due = await store.due_for_expiry(conn, Status.MESSAGE_STATUS_ACCEPTED, now, BATCH)
            cleanup = await store.cleanup_due(conn, now, counters_before, hours_before)
        moved: set[str] = set()
        if due:
            async with self.db.write() as s:
                conn = await s.connection()
                messages = await store.get_messages(conn, due)
                seqs = await store.lock_senders(conn, (m.sender for m in messages))
                moved = await store.move_statuses(
                    conn,
                    [m.message_id for m in messages],
                    Status.MESSAGE_STATUS_ACCEPTED,
                    Status.MESSAGE_STATUS_EXPIRED,
                    now,
                )
                await store.delete_all_envelopes(conn, sorted(moved))
                changed = await record_moves(
                    conn,
                    seqs,
                    [m for m in messages if m.message_id in moved],
                    Status.MESSAGE_STATUS_EXPIRED,
                    now,
                    outbox=lambda m: (
                        store.outbox_row(
                            "VOID",
                            {
                                "message_id": m.message_id,
                                "authorization_id": m.authorization_id,
                                "reason": str(billing_pb2.VOID_REASON_EXPIRED),
                            },
                            now,
                        )
                        if m.authorization_id
                        else None
                    ),
                )
            for sender in changed:
                self.notifier.notify(status_key(sender))
            if moved:
                self.notifier.notify(OUTBOX)
        if cleanup:
            async with self.db.write() as s:
                await store.delete_expired_envelopes(s, now)
                await store.drop_counters_before(s, counters_before)
                await store.drop_conversation_counts_before(s, hours_before)
        return len(moved)
