"""The hot path's shortcuts keep every rule: statement counts pinned, the guarded UPDATEs equal
to the ledger's Python checks at the int64 edges, rate cards cached per process yet never
missed when set on another replica, and the zero sum under concurrent charges."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from typing import Any, cast

import grpc
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy import Table, select, update

from billing_svc import cardcache, ledger, postings
from billing_svc.app import DEFINITION
from billing_svc.directory import revenue_shard
from billing_svc.models import AccountRow
from billing_svc.postings import Side
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.errors import DomainError
from bizmsg.kit.storage import Database
from bizmsg.kit.testing import ServiceThread, sql_statements
from tests.billing.support import (
    ADMIN,
    CS_WINDOW,
    DELIVERY,
    MARKETING,
    NO_WINDOW,
    UTILITY,
    Billing,
    assert_ledger_consistent,
    fails,
)

MAX = ledger.INT64_MAX
# No sweep while counting (its statements would be counted too); platform revenue split
# over 4 accounts per currency, so the tests below also cover the sharded ledger.
QUIET = {"BIZMSG_BILLING_SWEEP_INTERVAL_SECONDS": "3600", "BIZMSG_BILLING_REVENUE_SHARDS": "4"}


@contextmanager
def quiet_billing(
    database_url: str, clock: ManualClock, env: dict[str, str] | None = None
) -> Iterator[Billing]:
    service = ServiceThread(
        DEFINITION, database_url=database_url, clock=clock, env={**QUIET, **(env or {})}
    ).start()
    b = Billing(service, clock)
    try:
        yield b
    finally:
        b.close()
        service.stop()


def statements(b: Billing) -> AbstractContextManager[list[str]]:
    """The SQL statements the service sends, transaction control left out."""
    return sql_statements(b.service.runtime.db)


def counted(b: Billing, call: Callable[[], Any]) -> tuple[Any, list[str]]:
    with statements(b) as seen:
        result = call()
    return result, list(seen)


def test_statement_counts_of_the_hot_path(database_url: str, clock: ManualClock) -> None:
    """Warm (caches loaded): charge 5 statements — transfer, authorization, idempotency key,
    wallet reservation (which also checks the rate card current), revenue; capture and void 5
    — the authorization (moved, locked and read in one), transfer, key, wallet, revenue; a
    free message 2. The old code sent 9 and 10. These must not silently grow back."""
    with quiet_billing(database_url, clock) as b:
        w = b.wallet("count")
        b.top_up(w.account_id, 10_000_000)
        b.rate_card({(MARKETING, "DE"): 1_000, (UTILITY, "DE"): 500})
        b.capture(b.authorize("count").authorization_id)  # loads the rate card, finds accounts
        b.capture(b.authorize("count").authorization_id)  # the revenue account, now committed

        auth, sql = counted(b, lambda: b.authorize("count"))
        assert auth.price.amount_micros == 1_000
        assert len(sql) == 5, sql
        assert sum(s.startswith("UPDATE accounts") for s in sql) == 2, sql
        assert not any(s.startswith("SELECT") for s in sql), sql

        cap, sql = counted(b, lambda: b.capture(auth.authorization_id))
        assert cap.state == pb.AUTHORIZATION_STATE_CAPTURED
        assert len(sql) == 5, sql
        assert not any(s.startswith("SELECT") for s in sql), sql

        second = b.authorize("count")
        voided, sql = counted(b, lambda: b.void(second.authorization_id))
        assert voided.state == pb.AUTHORIZATION_STATE_VOIDED
        assert len(sql) == 5, sql

        free, sql = counted(b, lambda: b.authorize("count", category=UTILITY, window=CS_WINDOW))
        assert free.free
        assert len(sql) == 2, sql

        acct = b.account(w.account_id)
        assert acct.debits_posted.amount_micros == 3_000
        assert acct.debits_pending.amount_micros == 0


_EDGE = st.one_of(
    st.integers(0, 3),
    st.integers(MAX - 3, MAX),
    st.integers(0, 2**62),
    st.integers(0, MAX),
)


def _upto(n: int) -> st.SearchStrategy[int]:
    """0..n, the ends and their neighbours as likely as the middle."""
    return st.sampled_from(sorted({0, min(1, n), max(0, n - 1), n})) | st.integers(0, n)


@st.composite
def consistent_balances(draw: st.DrawFn) -> ledger.Balances:
    """Any balances the ledger can hold: every column in 0..int64 and the invariant."""
    limit = draw(_EDGE)
    credits = draw(_EDGE)
    room = min(MAX, credits + limit)
    debits = draw(_upto(room))
    pending = draw(_upto(min(MAX, credits + limit - debits)))
    return ledger.Balances(
        account_id="guarded",
        currency="EUR",
        credit_limit=limit,
        credits_posted=credits,
        debits_posted=debits,
        debits_pending=pending,
        credits_pending=draw(_EDGE),
    )


def test_guarded_updates_agree_with_the_ledger(database_url: str, clock: ManualClock) -> None:
    """One statement per side must accept exactly what ledger.check_debit / check_credit
    accept and leave exactly their balances, even at the int64 edges (no overflow error on
    PostgreSQL, no float arithmetic on SQLite)."""
    loop = asyncio.new_event_loop()
    db = Database(database_url)
    t = cast(Table, AccountRow.__table__)
    columns = ("credit_limit", "credits_posted", "debits_posted", "debits_pending")

    async def setup() -> None:
        await db.migrate("billing_svc:migrations")
        async with db.write() as session:
            session.add(
                AccountRow(
                    id="guarded",
                    owner="business:guarded",
                    kind=pb.ACCOUNT_KIND_BUSINESS_WALLET,
                    currency="EUR",
                    credit_limit=0,
                    credits_posted=0,
                    debits_posted=0,
                    debits_pending=0,
                    credits_pending=0,
                    create_time=clock.now(),
                )
            )

    async def one(b: ledger.Balances, op: ledger.Op, side: Side, amount: int) -> None:
        check = ledger.check_debit if side is Side.DEBIT else ledger.check_credit
        try:
            expected: ledger.Balances | None = check(op, b, amount)[0]
        except DomainError:
            expected = None
        async with db.write() as session:
            conn = await session.connection()
            values = {c: getattr(b, c) for c in (*columns, "credits_pending")}
            await conn.execute(update(t).where(t.c.id == "guarded").values(**values))
            applied = await postings.try_post(conn, op, side, "guarded", amount)
            row = (await conn.execute(select(t).where(t.c.id == "guarded"))).one()
        assert applied == (expected is not None), (b, op, side, amount)
        after = expected or b
        for c in (*columns, "credits_pending"):
            assert getattr(row, c) == getattr(after, c), (c, b, op, side, amount)

    big = ledger.Balances("guarded", "EUR", MAX, MAX, 0, 0, 0)
    after_big = ledger.Balances("guarded", "EUR", MAX, MAX, MAX - 1, 0, MAX)

    @settings(max_examples=200, deadline=None, database=None)
    @example(b=big, op=ledger.Op.PENDING, side=Side.DEBIT, amount=MAX)
    @example(b=big, op=ledger.Op.POSTED, side=Side.DEBIT, amount=MAX)
    @example(b=after_big, op=ledger.Op.PENDING, side=Side.DEBIT, amount=2)
    @example(b=after_big, op=ledger.Op.POSTED, side=Side.CREDIT, amount=1)
    @given(
        b=consistent_balances(),
        op=st.sampled_from(list(ledger.Op)),
        side=st.sampled_from(list(Side)),
        amount=st.integers(1, 3) | st.integers(1, MAX) | st.integers(MAX - 3, MAX),
    )
    def check(b: ledger.Balances, op: ledger.Op, side: Side, amount: int) -> None:
        loop.run_until_complete(one(b, op, side, amount))

    try:
        loop.run_until_complete(setup())
        check()
    finally:
        loop.run_until_complete(db.dispose())
        loop.close()


def test_reservation_refuses_a_stale_rate_card_version(database_url: str) -> None:
    """The reserve statement moves nothing unless the cached newest version is the store's."""
    loop = asyncio.new_event_loop()
    db = Database(database_url)

    async def go() -> None:
        await db.migrate("billing_svc:migrations")
        clock = ManualClock()
        async with db.write() as session:
            session.add(
                AccountRow(
                    id="w",
                    owner="business:w",
                    kind=pb.ACCOUNT_KIND_BUSINESS_WALLET,
                    currency="EUR",
                    credit_limit=1_000,
                    credits_posted=0,
                    debits_posted=0,
                    debits_pending=0,
                    credits_pending=0,
                    create_time=clock.now(),
                )
            )
        async with db.write() as session:
            conn = await session.connection()
            assert await cardcache.latest_version(conn, "EUR") == 0
            assert not await postings.try_reserve(conn, "w", 10, "EUR", 1)
            assert await postings.try_reserve(conn, "w", 10, "EUR", 0)
        await db.dispose()

    try:
        loop.run_until_complete(go())
    finally:
        loop.close()


def quote(b: Billing, business: str) -> Any:
    req = pb.GetQuoteRequest(
        business_id=business, recipient_country="DE", category=MARKETING, window=NO_WINDOW
    )
    return b.call(DELIVERY, "GetQuote", req)


def test_a_rate_card_set_on_another_replica_applies_from_its_effective_date(
    database_url: str, clock: ManualClock
) -> None:
    """Two replicas on one database. B caches the card; A sets new versions (from now, and
    from tomorrow): B's very next charge and quote use each one from its effective time."""
    with quiet_billing(database_url, clock) as a, quiet_billing(database_url, clock) as b:
        w = a.wallet("replica")
        a.top_up(w.account_id, 10_000_000)
        a.rate_card({(MARKETING, "DE"): 1_000})
        assert b.authorize("replica").price.amount_micros == 1_000  # B caches version 1
        assert quote(b, "replica").rate_card_version == 1

        a.rate_card({(MARKETING, "DE"): 2_000})  # effective now, on the other replica
        assert quote(b, "replica").price.amount_micros == 2_000
        second = b.authorize("replica")
        assert (second.price.amount_micros, second.rate_card_version) == (2_000, 2)

        a.rate_card({(MARKETING, "DE"): 3_000}, effective=clock.now() + timedelta(days=1))
        assert b.authorize("replica").price.amount_micros == 2_000
        clock.advance(timedelta(days=1))
        assert quote(b, "replica").price.amount_micros == 3_000
        third = b.authorize("replica")
        assert (third.price.amount_micros, third.rate_card_version) == (3_000, 3)

        # A card without the price: B refuses the charge rather than use an older card's.
        a.rate_card({(UTILITY, "DE"): 5})
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "NO_PRICE"):
            b.authorize("replica")
        acct = a.account(w.account_id)
        assert acct.debits_pending.amount_micros == 1_000 + 2_000 + 2_000 + 3_000


def test_concurrent_charges_of_many_businesses_keep_the_zero_sum(
    database_url: str, clock: ManualClock
) -> None:
    """Authorize, then capture or void, from 8 businesses at once, with platform revenue split
    over 4 accounts and the expiry sweep running: each wallet ends exact, the revenue accounts
    together hold exactly what was captured, every transfer debits one account and credits
    another, and all balances sum to zero."""
    price, businesses, per = 1_000, 8, 15
    sweeping = {"BIZMSG_BILLING_SWEEP_INTERVAL_SECONDS": "0.1"}
    with quiet_billing(database_url, clock, sweeping) as billing:
        wallets = {}
        for i in range(businesses):
            w = billing.wallet(f"many{i}")
            billing.top_up(w.account_id, per * price)
            wallets[f"many{i}"] = w.account_id
        billing.rate_card({(MARKETING, "DE"): price})
        start = threading.Barrier(16)

        def one(n: int) -> bool:
            if n < 16:
                start.wait()
            auth = billing.authorize(f"many{n % businesses}")
            if n % 3 == 0:
                billing.void(auth.authorization_id)
                return False
            billing.capture(auth.authorization_id)
            return True

        with ThreadPoolExecutor(max_workers=16) as pool:
            captured = list(pool.map(one, range(businesses * per)))
        for i, (business, account_id) in enumerate(wallets.items()):
            mine = [c for n, c in enumerate(captured) if n % businesses == i]
            acct = billing.account(account_id)
            assert acct.debits_posted.amount_micros == price * sum(mine), business
            assert acct.debits_pending.amount_micros == 0
            # One wallet's charges all go to one revenue account.
            req = pb.ListTransfersRequest(account_id=account_id, page_size=100)
            credited = {
                t.credit_account_id
                for t in billing.call(ADMIN, "ListTransfers", req).transfers
                if t.kind == pb.TRANSFER_KIND_MESSAGE_CHARGE
            }
            assert len(credited) == 1, credited
        accounts = billing.all_accounts([f"business:{b}" for b in wallets])
        revenue = [a for a in accounts if a.kind == pb.ACCOUNT_KIND_PLATFORM_REVENUE]
        # Made on first use: one revenue account per shard the wallets map to.
        assert len(revenue) == len({revenue_shard(w, 4) for w in wallets.values()})
        assert sum(a.credits_posted.amount_micros for a in revenue) == price * sum(captured)
        assert all(a.credits_pending.amount_micros == 0 for a in revenue)
        assert_ledger_consistent(accounts)


def test_concurrent_authorizations_past_the_funds_reserve_exactly_what_fits(
    database_url: str, clock: ManualClock
) -> None:
    """24 authorizations at once against a wallet that pays for 10. Group commits sum a
    batch's reservations of the wallet and revenue account into one UPDATE each
    (postings.reserve_later); a sum the wallet cannot pay sends the batch round again call by
    call. Exactly 10 succeed, the rest get INSUFFICIENT_FUNDS with nothing reserved, and the
    revenue account's pending credit matches the wallet's pending debit."""
    price, fits, calls = 1_000, 10, 24
    with quiet_billing(database_url, clock) as billing:
        wallet = billing.wallet("crowd")
        billing.top_up(wallet.account_id, fits * price)
        billing.rate_card({(MARKETING, "DE"): price})
        start = threading.Barrier(calls)

        def one(_: int) -> str:
            start.wait()
            try:
                billing.authorize("crowd")
            except grpc.RpcError as e:
                return cast(grpc.Call, e).code().name
            return "OK"

        with ThreadPoolExecutor(max_workers=calls) as pool:
            outcomes = list(pool.map(one, range(calls)))
        assert sorted(outcomes) == sorted(["OK"] * fits + ["RESOURCE_EXHAUSTED"] * (calls - fits))
        acct = billing.account(wallet.account_id)
        assert acct.debits_pending.amount_micros == fits * price
        assert acct.available.amount_micros == 0
        accounts = billing.all_accounts(["business:crowd"])
        revenue = [a for a in accounts if a.kind == pb.ACCOUNT_KIND_PLATFORM_REVENUE]
        assert sum(a.credits_pending.amount_micros for a in revenue) == fits * price
        assert_ledger_consistent(accounts)


def test_revenue_shards_are_stable_and_all_used() -> None:
    """Every payer maps to one shard, the same in every process (so every replica credits the
    same account), and the shards all get used."""
    payers = [f"payer-{i}" for i in range(40)]
    here = [revenue_shard(p, 4) for p in payers]
    assert set(here) == {0, 1, 2, 3}
    assert all(revenue_shard(p, 1) == 0 for p in payers)
    code = (
        "from billing_svc.directory import revenue_shard; "
        f"print([revenue_shard(p, 4) for p in {payers!r}])"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out.strip() == str(here)


def test_concurrent_writers_racing_on_a_unique_index_get_domain_answers(
    billing: Billing,
) -> None:
    """Different request_ids racing for one business wallet: one wallet, the rest
    ALREADY_EXISTS (never INTERNAL); racing rate cards: distinct consecutive versions."""
    start = threading.Barrier(8)

    def open_wallet(_: int) -> str:
        start.wait()
        try:
            billing.wallet("racer")
            return "opened"
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.ALREADY_EXISTS, e.details()
            return "exists"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(open_wallet, range(8)))
    assert sorted(outcomes) == ["exists"] * 7 + ["opened"]

    cards = threading.Barrier(6)

    def set_card(i: int) -> int:
        cards.wait()
        return int(billing.rate_card({(MARKETING, "DE"): 1_000 + i}).version)

    with ThreadPoolExecutor(max_workers=6) as pool:
        versions = sorted(pool.map(set_card, range(6)))
    assert versions == [1, 2, 3, 4, 5, 6]
