"""ServeAd benchmark: p50/p99 latency and throughput with 10 and with 10,000 active campaigns.

    python -m ads_svc.bench [--seconds 10] [--concurrency 16] [--sizes 10,10000] [--json FILE]

Consent, billing and ads run in-process (each on its own event loop and thread) on SQLite
files in a temporary directory, or on PostgreSQL with --postgres URL (a server URL where
this creates its databases, dropped after each size). Campaigns are seeded in bulk with SQL.
Each ServeAd is the whole path: the replay check and the candidate read (prepared
statements), the auction, the budget reservation with the impression and the stored response
(a group commit), and billing's ChargeAdEvent for the impression's price. A
third of the campaigns bid CPC, a little under the CPM ones, so CPM wins and every fill is
charged (a CPC impression would be free, charged only at the click). No seeded campaign
targets interests, so ServeAd does not ask consent for the person's preference (it asks only
when some candidate needs it). "charged" counts the served ads that went through billing.
Requests ask for country DE, language de; the 10,000 campaigns are spread over 50 countries,
so a request matches about 200 of them, read best first from the campaign_targets rank index
(a page of them, not all 200). The seed sets the target rows' estimates in one statement
(store.refresh_all_ranks), as the service does for each campaign it writes. Each size prints
one JSON line; --json also writes them all to a file (`bizmsg bench --scale` reads it). The
machine may be shared, so besides wall-clock figures each line has the CPU time per call: of
the whole process (consent, billing, ads and this load generator) and of the ads service's
own thread, which a busy neighbour does not inflate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import insert

from ads_svc import store
from ads_svc.app import DEFINITION as ADS
from ads_svc.models import CampaignRow, CampaignTargetRow
from bizmsg.ads.v1 import ads_pb2, ads_pb2_grpc
from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.storage import Database, postgres_execute, postgres_url
from bizmsg.kit.testing import ServiceThread, metadata_for

COUNTRIES = [
    "DE", "FR", "ES", "IT", "NL", "BE", "AT", "CH", "PL", "PT", "SE", "NO", "DK", "FI", "IE",
    "GB", "US", "CA", "MX", "BR", "AR", "CL", "CO", "PE", "IN", "ID", "PH", "VN", "TH", "MY",
    "SG", "JP", "KR", "AU", "NZ", "ZA", "NG", "KE", "EG", "MA", "TR", "SA", "AE", "IL", "GR",
    "CZ", "HU", "RO", "BG", "UA",
]  # fmt: skip
LANGUAGES = ["de", "en"]


def _definitions() -> tuple[Any, Any]:
    from billing_svc.app import DEFINITION as billing
    from consent_svc.app import DEFINITION as consent

    return consent, billing


def _eur(micros: int) -> common_pb2.Money:
    return common_pb2.Money(amount_micros=micros, currency_code="EUR")


def make_wallet(billing_target: str) -> str:
    with grpc.insecure_channel(billing_target) as ch:
        stub = billing_pb2_grpc.BillingServiceStub(ch)
        md = metadata_for("admin")
        account = stub.CreateAccount(
            billing_pb2.CreateAccountRequest(
                request_id=uuid.uuid4().hex,
                owner="advertiser:bench",
                kind=billing_pb2.ACCOUNT_KIND_ADVERTISER_WALLET,
                currency_code="EUR",
            ),
            metadata=md,
        ).account
        stub.TopUp(
            billing_pb2.TopUpRequest(
                request_id=uuid.uuid4().hex,
                account_id=account.account_id,
                amount=_eur(10**15),
                external_reference="bench",
            ),
            metadata=md,
        )
        return str(account.account_id)


async def seed(url: str, count: int, account_id: str) -> None:
    """Insert `count` active campaigns with big budgets, in bulk."""
    db = Database(url)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    for i in range(count):
        cid = str(uuid.uuid4())
        country = "DE" if count <= 10 else COUNTRIES[i % len(COUNTRIES)]
        cpc = i % 3 == 0
        rows.append(
            {
                "id": cid,
                "advertiser_id": "bench",
                "account_id": account_id,
                "business_id": f"biz{i}",
                "display_name": f"campaign {i}",
                "headline": "Talk to us",
                "body": "Message us for an offer.",
                "media_uri": "",
                "call_to_action": ads_pb2.CALL_TO_ACTION_SEND_MESSAGE,
                "countries": json.dumps([country]),
                "languages": json.dumps(LANGUAGES),
                "interests": "[]",
                "bid_type": ads_pb2.BID_TYPE_CPC if cpc else ads_pb2.BID_TYPE_CPM,
                # CPC bids score 0.80-0.99 per mille at the 2 % prior CTR, under every CPM
                # bid: CPM wins, so every fill takes the whole path through billing.
                "bid_micros": (40_000 + 100 * (i % 97)) if cpc else 1_000_000 + 1000 * (i % 89),
                "currency_code": "EUR",
                "daily_budget_micros": 10**13,
                "lifetime_budget_micros": 10**14,
                "start_time": now - timedelta(days=1),
                "end_time": None,
                "cap_max_impressions": 0,
                "cap_period_days": 0,
                "status": ads_pb2.CAMPAIGN_STATUS_ACTIVE,
                "spend_micros": 0,
                "spend_day": "",
                "spend_day_micros": 0,
                "impressions": 0,
                "clicks": 0,
                "unfunded_until": None,
                "create_time": now,
                "update_time": now,
            }
        )
        targets += [
            {"country": country, "language": lang, "campaign_id": cid} for lang in LANGUAGES
        ]
    async with db.write() as session:
        for start in range(0, count, 1000):
            await session.execute(insert(CampaignRow), rows[start : start + 1000])
        for start in range(0, len(targets), 2000):
            await session.execute(insert(CampaignTargetRow), targets[start : start + 2000])
        await store.refresh_all_ranks(await session.connection())
    await db.dispose()


async def load(target: str, seconds: float, concurrency: int) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    fills = 0
    charged = 0
    stop = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(target) as ch:
        stub = ads_pb2_grpc.AdsServiceStub(ch)

        async def worker(w: int) -> None:
            nonlocal fills, charged
            n = 0
            person = f"p{w}"
            md = metadata_for(f"user:{person}")
            while time.perf_counter() < stop:
                n += 1
                req = ads_pb2.ServeAdRequest(
                    request_id=f"{w}-{n}-{uuid.uuid4().hex[:8]}",
                    person_id=person,
                    placement=ads_pb2.PLACEMENT_STATUS,
                    context=ads_pb2.AdContext(country="DE", language="de"),
                )
                t0 = time.perf_counter()
                resp = await stub.ServeAd(req, metadata=md, timeout=30)
                latencies.append(time.perf_counter() - t0)
                fills += resp.HasField("ad")
                charged += resp.ad.price.amount_micros > 0

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return latencies, fills, charged


def run_one(size: int, seconds: float, concurrency: int, postgres: str | None) -> dict[str, Any]:
    consent_def, billing_def = _definitions()
    created: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        urls = {}
        for name in ("consent", "billing", "ads"):
            if postgres:
                dbname = f"bizmsg_bench_{name}_{uuid.uuid4().hex[:8]}"
                asyncio.run(postgres_execute(postgres, f'CREATE DATABASE "{dbname}"'))
                created.append(dbname)
                urls[name] = postgres_url(postgres, database=dbname)
            else:
                urls[name] = f"sqlite+aiosqlite:///{Path(tmp) / (name + '.db')}"
        try:
            with (
                ServiceThread(consent_def, database_url=urls["consent"]) as consent,
                ServiceThread(billing_def, database_url=urls["billing"]) as billing,
            ):
                deps = {"consent": consent.target, "billing": billing.target}
                with ServiceThread(ADS, database_url=urls["ads"], dependency_targets=deps) as ads:
                    account = make_wallet(billing.target)
                    t0 = time.perf_counter()
                    asyncio.run(seed(urls["ads"], size, account))
                    seeded = time.perf_counter() - t0
                    asyncio.run(load(ads.target, 1.0, concurrency))  # warm-up
                    ads_thread = ads.run(_thread_ident())
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    ads0 = _thread_cpu(ads_thread)
                    lat, fills, charged = asyncio.run(load(ads.target, seconds, concurrency))
                    elapsed = time.perf_counter() - t0
                    cpu = time.process_time() - cpu0
                    ads_cpu = _thread_cpu(ads_thread) - ads0
        finally:
            for dbname in created:
                assert postgres is not None
                asyncio.run(
                    postgres_execute(postgres, f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
                )
    q = statistics.quantiles(lat, n=100)
    return {
        "size": size,
        "campaigns": size,
        "backend": "postgresql" if postgres else "sqlite",
        "seed_seconds": round(seeded, 2),
        "requests": len(lat),
        "filled": fills,
        "charged": charged,
        "throughput_rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "cpu_ms_per_call": round(cpu / len(lat) * 1000, 3),
        "ads_thread_cpu_ms_per_call": round(ads_cpu / len(lat) * 1000, 3),
    }


async def _thread_ident() -> int:
    return threading.get_ident()


def _thread_cpu(ident: int) -> float:
    """CPU seconds used so far by the thread `ident` of this process."""
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--sizes", default="10,10000")
    parser.add_argument("--postgres", default=None, help="e.g. postgresql://postgres@127.0.0.1/x")
    parser.add_argument("--json", type=Path, help="write every size's figures to this file")
    ns = parser.parse_args()
    results = []
    for size in (int(s) for s in ns.sizes.split(",")):
        results.append(run_one(size, ns.seconds, ns.concurrency, ns.postgres))
        print(json.dumps(results[-1]), flush=True)
    if ns.json:
        backend = "postgresql" if ns.postgres else "sqlite"
        figures = {
            "bench": "ads",
            "backend": backend,
            "concurrency": ns.concurrency,
            "results": results,
        }
        ns.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
