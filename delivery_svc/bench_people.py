"""SendMessage to people the business has not messaged today, with 250 and with 99,000 people
already messaged in the last 24 hours (its tier allows 100,000).

    python -m delivery_svc.bench_people [--sizes 250,99000] [--sends 800] [--concurrency 16]
        [--postgres SERVER_URL] [--json FILE]

Every send starts a conversation, which the unique-people limit counts (limits.count). Delivery
runs as a real process with consent and billing answering at once (delivery_svc.bench), on a
fresh SQLite file per size, or a fresh database on the PostgreSQL server given (dropped after).
The day's earlier conversations are seeded in bulk with SQL (spread over the last 23 hours),
with their hourly counts. Each size prints one JSON line; --json
writes them all (`bizmsg bench --scale` reads it). The CPU per call is the delivery process's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import insert, text

from bizmsg.bench.procs import cpu_seconds
from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit.processes import ServiceProcess
from bizmsg.kit.storage import Database, postgres_execute, postgres_url
from bizmsg.kit.testing import metadata_for
from delivery_svc.bench import BUSINESS, DEVICE, NullDependencies, call_all, seed_people
from delivery_svc.models import ConversationCount, ConversationStart
from delivery_svc.policy import hour_window


async def seed_day(url: str, people: int, now: datetime) -> None:
    """`people` conversations of BUSINESS started over the last 23 hours."""
    times = [now - timedelta(hours=23) * (i + 1) / people for i in range(people)]
    rows = [
        {"business_id": BUSINESS, "person_id": f"earlier{i}", "start_time": t}
        for i, t in enumerate(times)
    ]
    hours: dict[int, int] = {}
    for t in times:
        hour = hour_window(t.timestamp())
        hours[hour] = hours.get(hour, 0) + 1
    db = Database(url)
    try:
        async with db.engine.begin() as conn:
            for i in range(0, people, 10_000):
                await conn.execute(insert(ConversationStart), rows[i : i + 10_000])
            counts = [
                {"business_id": BUSINESS, "hour_start": h, "count": n} for h, n in hours.items()
            ]
            await conn.execute(insert(ConversationCount), counts)
        if db.dialect == "postgresql":  # as autovacuum would, a while into a real day
            autocommit = db.engine.execution_options(isolation_level="AUTOCOMMIT")
            async with autocommit.connect() as conn:
                await conn.execute(text("VACUUM ANALYZE"))
    finally:
        await db.dispose()


def _new_person(i: int) -> str:
    return f"new{i}"


async def _people(target: str, people: int) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        await seed_people(stub, people, tier=delivery_pb2.MESSAGING_TIER_100K, person=_new_person)


async def _send_to_new_people(
    target: str, sends: int, concurrency: int
) -> tuple[list[float], float]:
    latencies: list[float] = []
    business = metadata_for(f"business:{BUSINESS}")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)

        async def send(i: int) -> None:
            t0 = time.perf_counter()
            await stub.SendMessage(
                delivery_pb2.SendMessageRequest(
                    request_id=str(uuid.uuid4()),
                    recipient=f"user:{_new_person(i)}",
                    category=common_pb2.CATEGORY_MARKETING,
                    sender_device_id="api",
                    envelopes=[delivery_pb2.DeviceEnvelope(device_id=DEVICE, ciphertext=b"c" * 64)],
                ),
                metadata=business,
            )
            latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await call_all(sends, concurrency, send)
        return latencies, time.perf_counter() - t0


def run_one(size: int, sends: int, concurrency: int, postgres: str | None) -> dict[str, Any]:
    deps = NullDependencies().start()
    dbname = f"bizmsg_bench_people_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="delivery-people-") as tmp:
        work = Path(tmp)
        if postgres:
            asyncio.run(postgres_execute(postgres, f'CREATE DATABASE "{dbname}"'))
            url = postgres_url(postgres, database=dbname)
        else:
            url = f"sqlite+aiosqlite:///{work / 'delivery.db'}"
        env = {
            "BIZMSG_DELIVERY_DATABASE_URL": url,
            "BIZMSG_DATA_DIR": str(work),
            "BIZMSG_CONSENT_TARGET": f"127.0.0.1:{deps.consent_port}",
            "BIZMSG_BILLING_TARGET": f"127.0.0.1:{deps.billing_port}",
        }
        proc = ServiceProcess("delivery", env, work / "delivery.log")
        try:
            proc.start().wait_serving()  # its schema is made on start
            asyncio.run(seed_day(url, size, datetime.now(UTC)))
            asyncio.run(_people(proc.target, sends))
            assert proc.proc is not None
            pid = proc.proc.pid
            cpu0 = cpu_seconds(pid) or 0.0
            latencies, elapsed = asyncio.run(_send_to_new_people(proc.target, sends, concurrency))
            cpu = (cpu_seconds(pid) or 0.0) - cpu0
        finally:
            proc.terminate(timeout=15)
            deps.stop()
            if postgres:
                drop = f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'
                asyncio.run(postgres_execute(postgres, drop))
    q = statistics.quantiles(latencies, n=100)
    return {
        "size": size,
        "people_today": size,
        "backend": "postgresql" if postgres else "sqlite",
        "requests": len(latencies),
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "cpu_ms_per_call": round(cpu / len(latencies) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="250,99000")
    parser.add_argument("--sends", type=int, default=800)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--postgres", default=None, help="e.g. postgresql://postgres@127.0.0.1/x")
    parser.add_argument("--json", type=Path, help="write every size's figures to this file")
    ns = parser.parse_args()
    results = []
    for size in (int(s) for s in ns.sizes.split(",")):
        results.append(run_one(size, ns.sends, ns.concurrency, ns.postgres))
        print(json.dumps(results[-1]), flush=True)
    if ns.json:
        figures = {
            "bench": "delivery",
            "backend": "postgresql" if ns.postgres else "sqlite",
            "concurrency": ns.concurrency,
            "results": results,
        }
        ns.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
