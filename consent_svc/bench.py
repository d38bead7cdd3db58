"""CheckConsent benchmark: latency (p50/p99) and throughput with 1,000 and 1,000,000 consent
records, seeded in bulk with SQL, against the service served in-process.

    python -m consent_svc.bench [--database-url URL] [--seconds 10] [--concurrency 16]
                                [--sizes 1000,1000000] [--rounds 2] [--json FILE]

Without --database-url each size gets a fresh SQLite file in a temporary directory; with a
PostgreSQL URL (postgresql+asyncpg://..., a database the service may migrate and fill) the
table is truncated, reseeded (COPY) and vacuumed for each size. --json writes every run's
figures (`bizmsg bench --scale` reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import delete, insert, text

from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit.storage import Database
from bizmsg.kit.testing import ServiceThread, metadata_for
from consent_svc import categories, crypto
from consent_svc.app import DEFINITION
from consent_svc.models import Relation

BATCH = 20_000
BUSINESS = "bench-biz"


def _rows(hash_secret: bytes, start: int, stop: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [
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


async def _clear(db: Database) -> None:
    async with db.write() as s:
        # On PostgreSQL a DELETE would leave the previous run's rows as dead tuples in the heap
        # and the index, and the next lookups would wade through them.
        await s.execute(
            text("TRUNCATE relations") if db.dialect == "postgresql" else delete(Relation)
        )


async def _seed(db: Database, hash_secret: bytes, start: int, stop: int) -> None:
    rows = _rows(hash_secret, start, stop)
    if db.dialect != "postgresql":
        async with db.write() as s:
            await s.execute(insert(Relation), rows)
        return
    # COPY: ten times faster than INSERT for a million rows.
    columns = list(rows[0])
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.copy_records_to_table(  # type: ignore[union-attr]
            "relations", records=[tuple(r[c] for c in columns) for r in rows], columns=columns
        )


async def _settle(db: Database) -> None:
    """What autovacuum does soon after a bulk load in a running system: planner statistics, hint
    bits and the visibility map. Without it the first reads of each page write it back."""
    if db.dialect != "postgresql":
        return
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.execute("VACUUM ANALYZE relations")  # type: ignore[union-attr]


@dataclass
class Result:
    records: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float
    # CPU of the whole process (the service and the load generator's threads) per call.
    cpu_ms: float

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def figures(self, round_: int) -> dict[str, Any]:
        return {
            "round": round_,
            "size": self.records,
            "calls": self.calls,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "cpu_ms_per_call": round(self.cpu_ms, 4),
        }


def _load(target: str, records: int, seconds: float, concurrency: int) -> Result:
    channel = grpc.insecure_channel(target)
    stub = consent_pb2_grpc.ConsentServiceStub(channel)
    md = metadata_for("service:delivery")
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = 0.0  # set once the warm-up is done

    def worker(seed: int) -> None:
        mine: list[float] = []
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            i = rng.randrange(records)  # uniform over the whole table: no hot rows
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
    cpu_started = time.process_time()
    deadline = started + seconds
    threads = [threading.Thread(target=worker, args=(n + 1,)) for n in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu_started
    channel.close()
    q = statistics.quantiles(latencies, n=100)
    calls = len(latencies)
    return Result(records, calls, elapsed, q[49] * 1000, q[98] * 1000, cpu * 1000 / calls)


def run(records: int, url: str, seconds: float, concurrency: int) -> Result:
    with ServiceThread(DEFINITION, database_url=url) as svc:
        db: Database = svc.runtime.db
        secret = svc.run(_secret(svc.runtime))
        t0 = time.monotonic()
        svc.run(_clear(db))
        # One batch per call: each stays well inside ServiceThread's per-call timeout.
        for start in range(0, records, BATCH):
            svc.run(_seed(db, secret, start, min(start + BATCH, records)))
        svc.run(_settle(db))
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


def _sqlite_url(tmp: str, records: int, round_: int) -> str:
    return f"sqlite+aiosqlite:///{Path(tmp) / f'bench_{records}_{round_}.db'}"


def _remove_sqlite(url: str) -> None:
    path = url.split(":///", 1)[1]
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


def _ratios(small: list[Result], large: list[Result]) -> str:
    p50 = statistics.median(r.p50_ms for r in large) / statistics.median(r.p50_ms for r in small)
    p99 = statistics.median(r.p99_ms for r in large) / statistics.median(r.p99_ms for r in small)
    tput = statistics.median(r.throughput for r in small) / statistics.median(
        r.throughput for r in large
    )
    cpu = statistics.median(r.cpu_ms for r in large) / statistics.median(r.cpu_ms for r in small)
    return f"p50 {p50:.2f}x, p99 {p99:.2f}x, throughput {tput:.2f}x slower, CPU/call {cpu:.2f}x"


def measure(
    sizes: list[int], database_url: str, seconds: float, concurrency: int, rounds: int
) -> list[tuple[int, Result]]:
    """Every size once per round, interleaved; returns (round, result) pairs in run order."""
    results: list[tuple[int, Result]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(1, rounds + 1):
            for n in sizes:
                url = database_url or _sqlite_url(tmp, n, round_)
                r = run(n, url, seconds, concurrency)
                results.append((round_, r))
                print(
                    f"round {round_}: {n:,} records: {r.throughput:.0f} calls/s, "
                    f"p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, {r.cpu_ms:.2f} CPU ms/call",
                    flush=True,
                )
                if not database_url:
                    _remove_sqlite(url)  # a 1M-row file is large: keep one at a time
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sizes", default="1000,1000000")
    # On a shared, noisy machine one run per size says little: repeat them, interleaved.
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write every run's figures to this file")
    ns = parser.parse_args()
    sizes = [int(s) for s in ns.sizes.split(",")]
    runs = measure(sizes, ns.database_url, ns.seconds, ns.concurrency, ns.rounds)
    results = [r for _, r in runs]
    if ns.json:
        figures = {
            "bench": "consent",
            "backend": "postgresql" if ns.database_url.startswith("postgresql") else "sqlite",
            "concurrency": ns.concurrency,
            "results": [r.figures(round_) for round_, r in runs],
        }
        ns.json.write_text(json.dumps(figures, indent=2))
    print(
        f"{'round':>5} {'records':>10} {'calls':>8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'cpu ms':>7}"
    )
    for round_, r in runs:
        print(
            f"{round_:>5} {r.records:>10,} {r.calls:>8} {r.throughput:>9.0f} "
            f"{r.p50_ms:>8.2f} {r.p99_ms:>8.2f} {r.cpu_ms:>7.2f}"
        )
    print("cpu ms: CPU of the whole process (service and load threads) per call")
    if len(sizes) == 2:
        small = [r for r in results if r.records == sizes[0]]
        large = [r for r in results if r.records == sizes[1]]
        for i, (s_, l_) in enumerate(zip(small, large, strict=True)):
            print(f"round {i + 1} large/small: {_ratios([s_], [l_])}")
        if ns.rounds > 1:
            print(f"medians large/small: {_ratios(small, large)}")


if __name__ == "__main__":
    main()
