"""What delivery asks its database per call, pinned so that it cannot silently grow back.

Delivery runs in this process (ServiceThread, on a fresh database of the stack's backend)
against the stack's real consent and billing processes, and every SQL statement it sends is
recorded with the asyncio task that sent it: on SQLite every statement the driver runs
(bizmsg.kit.sqlite_inline.traced), on PostgreSQL every statement SQLAlchemy or
bizmsg.kit.prepared sends (prepared statements skip SQLAlchemy on both). The background jobs
(outbox relay, expiry sweep) run in tasks named after them, so a call's own statements are
told apart from theirs. Transaction control (BEGIN, COMMIT, savepoints) and a new
connection's PRAGMAs are not counted.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from pprint import pformat
from typing import Any

import grpc
import pytest
from sqlalchemy import event, func, select

from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit import prepared, sqlite_inline
from bizmsg.kit.testing import ServiceThread, is_transaction_control, metadata_for
from delivery_svc.app import DEFINITION
from delivery_svc.models import OutboxItem
from tests.conftest import _admin, _async_url
from tests.delivery.helpers import (
    MARKETING,
    ProcStack,
    Stack,
    device_keys,
    rid,
    uid,
    wait_until,
)

BACKGROUND = {"outbox-relay", "expiry-sweep"}
# Statements per call, foreground only.
# Send: the recipient's devices with the limits and the idempotency replay (one read); the
# idempotency record, the sender's sequence number, the counters, message, envelope,
# ACCEPTED event (write). The first message to a person (outside a window) also records the
# conversation start, counts it in its hour and, on a limited tier (the default, 250), sums
# the day's hours (store.people_since).
SEND = {"sqlite": 7, "postgresql": 7}
FIRST_SEND = {"sqlite": 10, "postgresql": 10}
# Ack: the idempotency replay, the waiting messages, the sender locked, envelopes deleted,
# status moved, DELIVERED event, sender's sequence, CAPTURE outbox row, idempotency record.
ACK = {"sqlite": 9, "postgresql": 9}
WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|BEGIN IMMEDIATE)\b", re.IGNORECASE)


@dataclass
class Recorder:
    """Every statement of one engine: (task name, SQL, parameters), in order."""

    rows: list[tuple[str, str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    seen: list[str] = field(default_factory=list)  # every statement taken so far

    def __call__(self, conn: Any, cursor: Any, sql: str, params: Any, ctx: Any, many: bool) -> None:
        self.record(sql, params)

    def record(self, sql: str, params: Any = None) -> None:
        # Not counted: transaction control, and a new connection's set-up.
        if is_transaction_control(sql) or sql.lstrip().upper().startswith("PRAGMA"):
            return
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        with self.lock:
            self.rows.append((task.get_name() if task else "", sql, params))

    def take(self) -> list[tuple[str, str, Any]]:
        with self.lock:
            rows, self.rows = self.rows, []
        self.seen.extend(sql for _, sql, _ in rows)
        return rows


def foreground(rows: list[tuple[str, str, Any]]) -> list[str]:
    return [sql for task, sql, _ in rows if task not in BACKGROUND]


@pytest.fixture
def delivery(
    procs: ProcStack, tmp_path: Path
) -> Iterator[tuple[ServiceThread, Recorder, str, str]]:
    """Delivery in-process (with its statement recorder, backend and database URL)."""
    stack_url = procs.procs["delivery"].env["BIZMSG_DELIVERY_DATABASE_URL"]
    backend = "sqlite" if stack_url.startswith("sqlite") else "postgresql"
    dbname = ""
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'delivery.db'}"
    else:
        dbname = f"bizmsg_t_stmts_{uuid.uuid4().hex[:12]}"
        asyncio.run(_admin(f'CREATE DATABASE "{dbname}"'))
        url = _async_url(dbname)
    recorder = Recorder()
    svc = ServiceThread(
        DEFINITION,
        database_url=url,
        env={
            "BIZMSG_CLOCK_FILE": str(procs.clock_file),
            "BIZMSG_DELIVERY_RELAY_INTERVAL": "0.05",
            "BIZMSG_DELIVERY_SWEEP_INTERVAL": "0.1",
        },
        dependency_targets={
            "consent": procs.stack.consent_target,
            "billing": procs.stack.billing_target,
        },
    )
    try:
        with svc:
            db = svc.runtime.db
            if backend == "sqlite":
                with sqlite_inline.traced(db.path, recorder.record):
                    yield svc, recorder, backend, url
            else:
                event.listen(db.engine.sync_engine, "before_cursor_execute", recorder)
                with prepared.traced(db.engine.sync_engine.pool, recorder.record):
                    yield svc, recorder, backend, url
    finally:
        if dbname:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


def _publish(stub: delivery_pb2_grpc.DeliveryServiceStub, owner: str) -> None:
    identity, spk, sig = device_keys()
    stub.PublishKeys(
        delivery_pb2.PublishKeysRequest(
            request_id=rid("keys"),
            device_id="d1",
            identity_key=identity,
            signed_pre_key=delivery_pb2.SignedPreKey(public_key=spk, signature=sig),
            country_code="DE",
        ),
        metadata=metadata_for(owner),
    )


def test_statements_per_send_ack_and_idle_relay(
    st: Stack, delivery: tuple[ServiceThread, Recorder, str, str]
) -> None:
    svc, recorder, backend, url = delivery
    shop, person = uid("count"), uid("p")
    st.fund(shop, 10_000_000)
    st.grant(person, shop, MARKETING)
    with grpc.insecure_channel(svc.target) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        _publish(stub, f"user:{person}")

        def send() -> str:
            response = stub.SendMessage(
                st.raw_send_request(f"user:{person}", MARKETING),
                metadata=metadata_for(f"business:{shop}"),
            )
            return str(response.message_id)

        recorder.take()
        first = send()
        first_sql = foreground(recorder.take())
        second = send()
        send_sql = foreground(recorder.take())
        assert len(first_sql) <= FIRST_SEND[backend], pformat(first_sql)
        assert len(send_sql) <= SEND[backend], pformat(send_sql)
        # The recorder sees the prepared statements too (they skip SQLAlchemy).
        assert any(sql.lstrip().startswith("INSERT INTO messages") for sql in send_sql), send_sql

        stub.AckMessages(
            delivery_pb2.AckMessagesRequest(
                request_id=rid("ack"), device_id="d1", message_ids=[first]
            ),
            metadata=metadata_for(f"user:{person}"),
        )
        ack_sql = foreground(recorder.take())
        assert len(ack_sql) <= ACK[backend], pformat(ack_sql)

        # The ack woke the relay: the capture lands, and the outbox is empty again.
        def outbox_empty() -> bool:
            return bool(svc.run(_outbox_empty(svc)))

        wait_until(outbox_empty)
        assert st.money(shop)[1] > 0
        # Idle: the relay polls every 0.05 s and the sweep every 0.1 s, reading only.
        recorder.take()
        threading.Event().wait(0.5)
        idle = [sql for task, sql, _ in recorder.take() if task in BACKGROUND]
        assert idle, "the background jobs did not run"
        assert not [sql for sql in idle if WRITE.match(sql)], pformat(idle)

        if backend == "sqlite":
            # Every statement sent (calls, relay claims and deletes, sweeps) is index-served.
            recorder.take()
            _assert_no_table_scans(url, recorder.seen)
        assert second


async def _outbox_empty(svc: ServiceThread) -> bool:
    async with svc.runtime.db.read() as s:
        return (
            int((await s.execute(select(func.count()).select_from(OutboxItem))).scalar_one()) == 0
        )


def _assert_no_table_scans(url: str, statements: list[str]) -> None:
    """EXPLAIN QUERY PLAN of each distinct statement: no full scan of a table ("SCAN t"
    without an index). SQLite traces statements with their values in place."""
    path = url.split(":///", 1)[1]
    conn = sqlite3.connect(path)
    try:
        scans: dict[str, list[str]] = {}
        for sql in dict.fromkeys(statements):
            plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
            full = [p for p in plan if re.fullmatch(r"SCAN \w+", p)]
            if full:
                scans[sql] = plan
        assert not scans, pformat(scans)
    finally:
        conn.close()
