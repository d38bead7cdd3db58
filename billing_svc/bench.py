"""Benchmark: AuthorizeCharge + CaptureCharge against an empty ledger and a 1,000,000-transfer one.

    python -m billing_svc.bench [--backend sqlite|postgresql] [--pairs 2000] [--concurrency 16]
                                [--businesses 16] [--revenue-shards 1] [--transfers 1000000]
                                [--json FILE]

Each run starts billing as a real process on a fresh database, measures pairs (authorize,
then capture, sequentially per worker) from `concurrency` concurrent workers over one
channel, and prints throughput and p50/p99 latency of a pair. The large ledger is seeded in
bulk with INSERT ... SELECT over a generated series (500,000 captured messages = 1,000,000
transfers, their authorizations and idempotency keys, plus the top-ups that paid for them),
with balances that match, so all balances still sum to zero. --transfers sets that count
(smaller for a quick check); --json writes the figures (`bizmsg bench --scale` reads them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import LargeBinary, bindparam, make_url, text

from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.billing.v1 import billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.config import DEV_TOKEN_SECRET
from bizmsg.kit.processes import ServiceProcess
from bizmsg.kit.storage import Database, UTCDateTime, postgres_execute, postgres_url

PRICE = 1_000
SEED_WALLETS = 1_000
SEED_TRANSFERS = 1_000_000  # two per captured message: pending + post_pending
SEED_TIME = datetime(2025, 6, 1, tzinfo=UTC)
_tokens = TokenAuthority(DEV_TOKEN_SECRET.encode())
_ACCOUNT_COLUMNS = (
    "(id, owner, kind, currency, credit_limit, credits_posted, debits_posted, debits_pending, "
    "credits_pending, create_time)"
)


def _md(principal: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {_tokens.mint(principal)}")]


@dataclass
class Result:
    label: str
    pairs: int
    seconds: float
    latencies: list[float]

    @property
    def throughput(self) -> float:
        return self.pairs / self.seconds

    def pct(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1] * 1000

    def figures(self, seeded: int, transfers_after: int) -> dict[str, Any]:
        return {
            "ledger": self.label,
            "size": seeded,
            "transfers_after": transfers_after,
            "pairs": self.pairs,
            "seconds": round(self.seconds, 3),
            "throughput_rps": round(self.throughput, 1),
            "p50_ms": round(self.pct(50), 3),
            "p99_ms": round(self.pct(99), 3),
        }


def seed_shape(transfers: int) -> tuple[int, int]:
    """(wallets, messages) for about `transfers` message transfers: every wallet pays for the
    same number of messages, so the seeded balances are whole."""
    messages = transfers // 2
    wallets = max(1, min(SEED_WALLETS, messages))
    return wallets, messages - messages % wallets


async def _setup(stub: billing_pb2_grpc.BillingServiceStub, businesses: int) -> None:
    admin = _md("admin")
    for b in range(businesses):
        acct = await stub.CreateAccount(
            pb.CreateAccountRequest(
                request_id=f"bench-wallet-{b}",
                owner=f"business:bench{b}",
                kind=pb.ACCOUNT_KIND_BUSINESS_WALLET,
                currency_code="EUR",
            ),
            metadata=admin,
        )
        await stub.TopUp(
            pb.TopUpRequest(
                request_id=f"bench-topup-{b}",
                account_id=acct.account.account_id,
                amount=common_pb2.Money(amount_micros=10**15, currency_code="EUR"),
                external_reference="bench",
            ),
            metadata=admin,
        )
    await stub.SetRateCard(
        pb.SetRateCardRequest(
            request_id="bench-card",
            currency_code="EUR",
            entries=[
                pb.RateCardEntry(
                    category=common_pb2.CATEGORY_MARKETING,
                    recipient_country="DE",
                    price=common_pb2.Money(amount_micros=PRICE, currency_code="EUR"),
                )
            ],
        ),
        metadata=admin,
    )


async def _load(
    target: str, label: str, pairs: int, concurrency: int, warmup: int, businesses: int
) -> Result:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        md = _md("service:delivery")
        run = uuid.uuid4().hex[:8]
        latencies: list[float] = []

        async def pair(i: int) -> float:
            t0 = time.perf_counter()
            auth = await stub.AuthorizeCharge(
                pb.AuthorizeChargeRequest(
                    request_id=f"{run}-m{i}",
                    business_id=f"bench{i % businesses}",
                    recipient_country="DE",
                    category=common_pb2.CATEGORY_MARKETING,
                    window=common_pb2.WINDOW_KIND_NONE,
                ),
                metadata=md,
                timeout=30,
            )
            await stub.CaptureCharge(
                pb.CaptureChargeRequest(
                    request_id=f"{run}-c{i}", authorization_id=auth.authorization_id
                ),
                metadata=md,
                timeout=30,
            )
            return time.perf_counter() - t0

        async def worker(indexes: range, record: bool) -> None:
            for i in indexes:
                dt = await pair(i)
                if record:
                    latencies.append(dt)

        async def phase(start: int, n: int, record: bool) -> float:
            per = n // concurrency
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    worker(range(start + w * per, start + (w + 1) * per), record)
                    for w in range(concurrency)
                )
            )
            return time.perf_counter() - t0

        await phase(0, warmup, record=False)
        seconds = await phase(warmup, pairs, record=True)
        return Result(label, len(latencies), seconds, latencies)


def _series(dialect: str, n: int) -> str:
    if dialect == "postgresql":
        return f"WITH s(n) AS (SELECT generate_series(0, {n - 1}))"
    return f"WITH RECURSIVE s(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM s WHERE n < {n - 1})"


async def seed(url: str, transfers: int = SEED_TRANSFERS) -> None:
    """Bulk-load the captured messages of `transfers` transfers (see seed_shape) into a
    migrated, otherwise empty database."""
    db = Database(url)
    wallets, messages = seed_shape(transfers)
    per_wallet = messages // wallets
    t = bindparam("t", type_=UTCDateTime)
    exp = bindparam("exp", type_=UTCDateTime)
    blob = bindparam("blob", type_=LargeBinary)
    w = _series(db.dialect, wallets)
    m = _series(db.dialect, messages)
    msg_wallet = f"'seed-w-' || (n % {wallets})"
    statements = [
        # The platform accounts first, as the service would make them.
        f"INSERT INTO accounts {_ACCOUNT_COLUMNS} VALUES ('seed-revenue', 'platform', 3, 'EUR', 0, "
        f"{messages * PRICE}, 0, 0, 0, :t)",
        f"INSERT INTO accounts {_ACCOUNT_COLUMNS} VALUES ('seed-settlement', 'platform', 4, 'EUR', "
        f"{2**63 - 1}, "
        f"0, {messages * PRICE}, 0, 0, :t)",
        f"{w} INSERT INTO accounts {_ACCOUNT_COLUMNS} SELECT 'seed-w-' || n, "
        f"'business:seed' || n, 1, 'EUR', 0, "
        f"{per_wallet * PRICE}, {per_wallet * PRICE}, 0, 0, :t FROM s",
        f"{w} INSERT INTO transfers SELECT 'seed-t-' || n, 'seed-settlement', 'seed-w-' || n, "
        f"{per_wallet * PRICE}, 'EUR', 1, false, false, false, NULL, 0, '', '', 0, 'psp', :t "
        f"FROM s",
        f"{m} INSERT INTO transfers SELECT 'seed-p-' || n, {msg_wallet}, 'seed-revenue', {PRICE}, "
        f"'EUR', 2, true, false, false, NULL, 1, 'DE', '', 0, 'seed-a-' || n, :t FROM s",
        f"{m} INSERT INTO transfers SELECT 'seed-c-' || n, {msg_wallet}, 'seed-revenue', {PRICE}, "
        f"'EUR', 2, false, true, false, 'seed-p-' || n, 1, 'DE', '', 0, 'seed-a-' || n, :t FROM s",
        f"{m} INSERT INTO authorizations SELECT 'seed-a-' || n, 'seed' || (n % {wallets}), "
        f"{msg_wallet}, 'seed-p-' || n, 'seed-c-' || n, 1, 'DE', 1, 1, {PRICE}, 'EUR', 1, 2, 0, "
        f":exp, :t, :t FROM s",
        f"{m} INSERT INTO idempotency_keys SELECT 'service:delivery', 'AuthorizeCharge', "
        f"'seed-m-' || n, 'f', :blob, :t FROM s",
        f"{m} INSERT INTO idempotency_keys SELECT 'service:delivery', 'CaptureCharge', "
        f"'seed-k-' || n, 'f', :blob, :t FROM s",
    ]
    params = {"t": SEED_TIME, "exp": SEED_TIME + timedelta(days=31), "blob": b"\x00"}
    async with db.write() as session:
        for sql in statements:
            used = [b for b in (t, exp, blob) if f":{b.key}" in sql]
            stmt = text(sql).bindparams(*used)
            await session.execute(stmt, {b.key: params[b.key] for b in used})
    if db.dialect == "postgresql":
        async with db.engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE"))
            # Write the bulk load's dirty pages back now, not during the measurement.
            await conn.execute(text("CHECKPOINT"))
    else:
        async with db.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
    await db.dispose()
    if db.dialect == "sqlite":
        # Fold the bulk load out of the WAL now, not during the measurement (as CHECKPOINT
        # does on PostgreSQL above); outside any transaction, so on a plain connection.
        with sqlite3.connect(url.split("///", 1)[1]) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _count_transfers(url: str) -> int:
    db = Database(url)
    async with db.read() as session:
        n = int((await session.execute(text("SELECT count(*) FROM transfers"))).scalar_one())
    await db.dispose()
    return n


def _run(
    label: str, url: str, work: Path, args: argparse.Namespace, pairs: int, seeded: bool
) -> tuple[Result, int]:
    env = {
        "BIZMSG_BILLING_DATABASE_URL": url,
        "BIZMSG_DATA_DIR": str(work),
        "BIZMSG_BILLING_REVENUE_SHARDS": str(args.revenue_shards),
    }
    proc = ServiceProcess("billing", env, work / f"{label}.log")
    proc.start().wait_serving()
    try:
        if seeded:
            # Migrated by the first start; seed with the service stopped, then serve again.
            proc.terminate()
            t0 = time.perf_counter()
            asyncio.run(seed(url, args.transfers))
            print(f"seeded {label} in {time.perf_counter() - t0:.1f}s", flush=True)
            proc.start().wait_serving()

        async def go() -> Result:
            async with grpc.aio.insecure_channel(proc.target) as channel:
                await _setup(billing_pb2_grpc.BillingServiceStub(channel), args.businesses)
            return await _load(
                proc.target,
                label,
                pairs,
                args.concurrency,
                warmup=pairs // 10,
                businesses=args.businesses,
            )

        result = asyncio.run(go())
    finally:
        proc.terminate()
    return result, asyncio.run(_count_transfers(url))


def measure(args: argparse.Namespace) -> list[tuple[Result, int]]:
    """The empty ledger, then the seeded one: (result, transfers after the run) for each."""
    pairs = args.pairs - args.pairs % args.concurrency
    with tempfile.TemporaryDirectory(prefix="billing-bench-") as tmp:
        work = Path(tmp)
        urls: dict[str, str] = {}
        for label in ("empty", "large"):
            if args.backend == "sqlite":
                urls[label] = f"sqlite+aiosqlite:///{work / label}.db"
            else:
                name = f"billing_bench_{label}_{uuid.uuid4().hex[:8]}"
                asyncio.run(postgres_execute(args.pg_admin_url, f'CREATE DATABASE "{name}"'))
                urls[label] = postgres_url(args.pg_admin_url, database=name)
        try:
            return [
                _run(label, urls[label], work, args, pairs, label == "large")
                for label in ("empty", "large")
            ]
        finally:
            if args.backend == "postgresql":
                for url in urls.values():
                    db = make_url(url).database
                    asyncio.run(
                        postgres_execute(
                            args.pg_admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'
                        )
                    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    # Messages come from many businesses; one wallet row would serialise every charge.
    ap.add_argument("--businesses", type=int, default=16)
    ap.add_argument("--revenue-shards", type=int, default=1)
    ap.add_argument(
        "--transfers",
        type=int,
        default=SEED_TRANSFERS,
        help="message transfers in the large ledger",
    )
    ap.add_argument("--json", type=Path, help="write the figures to this file")
    args = ap.parse_args()
    if args.transfers < 2:
        ap.error("--transfers: at least 2 (one captured message)")
    results = measure(args)
    wallets, messages = seed_shape(args.transfers)
    seeded = {"empty": 0, "large": 2 * messages}
    if args.json:
        figures = {
            "bench": "billing",
            "backend": args.backend,
            "concurrency": args.concurrency,
            "businesses": args.businesses,
            "revenue_shards": args.revenue_shards,
            # The large ledger also holds the top-ups that paid for its messages.
            "seeded_top_ups": wallets,
            "results": [r.figures(seeded[r.label], after) for r, after in results],
        }
        args.json.write_text(json.dumps(figures, indent=2))
    pairs = results[0][0].pairs
    print(
        f"\nbackend={args.backend} pairs={pairs} concurrency={args.concurrency} "
        f"businesses={args.businesses} revenue_shards={args.revenue_shards}"
    )
    print(f"{'ledger':<8}{'transfers after':>16}{'pairs/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for r, transfers in results:
        print(
            f"{r.label:<8}{transfers:>16,}{r.throughput:>10.1f}{r.pct(50):>9.2f}{r.pct(99):>9.2f}"
        )
    (empty, _), (large, _) = results
    print(
        f"ratio large/empty: throughput {large.throughput / empty.throughput:.3f}, "
        f"p50 {large.pct(50) / empty.pct(50):.3f}, p99 {large.pct(99) / empty.pct(99):.3f}"
    )


if __name__ == "__main__":
    main()
