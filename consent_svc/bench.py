"""CheckConsent benchmark: latency (p50/p99) and throughput with 1,000 and 1,000,000 consent
records, seeded in bulk with SQL, against the service served in-process.

    python -m consent_svc.bench [--database-url URL] [--seconds 10] [--concurrency 16]

Without --database-url each size gets a fresh SQLite file in a temporary directory; with a
PostgreSQL URL the tables are emptied and reseeded for each size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from sqlalchemy import delete, insert

from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit.testing import ServiceThread, metadata_for
from consent_svc import categories, crypto
from consent_svc.app import DEFINITION
from consent_svc.models import Relation

BATCH = 20_000
BUSINESS = "bench-biz"


async def _clear(runtime: object) -> None:
    async with runtime.db.write() as s:  # type: ignore[attr-defined]
        await s.execute(delete(Relation))


async def _seed(runtime: object, hash_secret: bytes, start: int, stop: int) -> None:
    now = datetime.now(UTC)
    rows = [
        {
            "person_hash": crypto.person_hash(hash_secret, f"p{i}"),
            "business_id": BUSINESS,
            "consent_id": f"c{i}",
            "consent_version": 1,
            "granted": categories.ALL_BITS,
            "revoked": 0,
            "blocked": False,
            "service_expire_time": now + timedelta(hours=12),
            "update_time": now,
        }
        for i in range(start, stop)
    ]
    async with runtime.db.write() as s:  # type: ignore[attr-defined]
        await s.execute(insert(Relation), rows)


@dataclass
class Result:
    records: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds


def _load(target: str, records: int, seconds: float, concurrency: int) -> Result:
    channel = grpc.insecure_channel(target)
    stub = consent_pb2_grpc.ConsentServiceStub(channel)
    md = metadata_for("service:delivery")
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(seed: int) -> None:
        mine: list[float] = []
        i = seed
        while time.monotonic() < deadline:
            i = (i * 7919 + 104729) % records  # spread over the whole table
            req = pb.CheckConsentRequest(
                business_id=BUSINESS, person_id=f"p{i}", category=common_pb2.CATEGORY_MARKETING
            )
            t0 = time.perf_counter()
            resp = stub.CheckConsent(req, metadata=md, timeout=10)
            mine.append(time.perf_counter() - t0)
            assert resp.allowed
        with lock:
            latencies.extend(mine)

    # Warm-up, not measured.
    for i in range(200):
        stub.CheckConsent(
            pb.CheckConsentRequest(
                business_id=BUSINESS,
                person_id=f"p{i % records}",
                category=common_pb2.CATEGORY_MARKETING,
            ),
            metadata=md,
        )
    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(n + 1,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    channel.close()
    q = statistics.quantiles(latencies, n=100)
    return Result(records, len(latencies), elapsed, q[49] * 1000, q[98] * 1000)


def run(records: int, url: str, seconds: float, concurrency: int) -> Result:
    with ServiceThread(DEFINITION, database_url=url) as svc:
        secret = svc.run(_secret(svc.runtime))
        t0 = time.monotonic()
        svc.run(_clear(svc.runtime))
        # One batch per call: each stays well inside ServiceThread's per-call timeout.
        for start in range(0, records, BATCH):
            svc.run(_seed(svc.runtime, secret, start, min(start + BATCH, records)))
        print(f"seeded {records:,} records in {time.monotonic() - t0:.1f}s", flush=True)
        return _load(svc.target, records, seconds, concurrency)


async def _secret(runtime: object) -> bytes:
    from consent_svc import store

    return await store.load_secret(
        runtime.db,  # type: ignore[attr-defined]
        runtime.clock,  # type: ignore[attr-defined]
        "person_hash",
        lambda: os.urandom(32),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sizes", default="1000,1000000")
    ns = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in ns.sizes.split(",")):
            url = ns.database_url or f"sqlite+aiosqlite:///{Path(tmp) / f'bench_{n}.db'}"
            results.append(run(n, url, ns.seconds, ns.concurrency))
    print(f"{'records':>10} {'calls':>8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for r in results:
        print(
            f"{r.records:>10,} {r.calls:>8} {r.throughput:>9.0f} {r.p50_ms:>8.2f} {r.p99_ms:>8.2f}"
        )
    if len(results) == 2:
        small, large = results
        print(
            f"large/small: p50 {large.p50_ms / small.p50_ms:.2f}x, "
            f"p99 {large.p99_ms / small.p99_ms:.2f}x, "
            f"throughput {small.throughput / large.throughput:.2f}x slower"
        )


if __name__ == "__main__":
    main()
