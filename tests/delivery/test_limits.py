"""Limits on the real processes: per second per business, per business->person pair, unique
people per 24 hours (tiers), and one-time prekeys handed out once under concurrent fetches.

Fixed windows are made deterministic by moving the services' clock to the start of one
(ProcStack.align) or holding it still for a burst (ProcStack.frozen); limits count a message
in the window of its arrival at delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import grpc
from sqlalchemy import select

from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.testing import metadata_for
from delivery_svc.models import Message
from delivery_svc.policy import Limits
from tests.delivery.helpers import (
    MARKETING,
    PRICE_MARKETING,
    SERVICE,
    ProcStack,
    Stack,
    details,
    fails,
    retry_delay,
    uid,
    wait_until,
)

T = TypeVar("T")
Tier = delivery_pb2.MessagingTier
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
WINDOW_CS = common_pb2.WINDOW_KIND_CUSTOMER_SERVICE


def _parallel(fn: Callable[[Any], T], items: list[Any], workers: int = 8) -> list[T]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def _people(st: Stack, shop: str, count: int) -> list[str]:
    """`count` people with a registered device who opted in to the shop's messages."""
    people = [uid("p") for _ in range(count)]

    def make(person: str) -> None:
        st.bare_device(f"user:{person}")
        st.grant(person, shop)

    _parallel(make, people)
    return people


def _send_times(procs: ProcStack, sender: str) -> list[datetime]:
    return procs.db.scalars("delivery", select(Message.send_time).where(Message.sender == sender))


def test_81st_message_in_a_second_is_refused(procs: ProcStack, st: Stack) -> None:
    shop = uid("burst")
    st.fund(shop, 100_000_000)
    # Ten people, ten messages each: under the pair limit (10 a minute), so only the
    # per-second limit (80 by default) can refuse.
    *people, spare = _people(st, shop, 11)
    requests = [st.raw_send_request(f"user:{people[i % 10]}", MARKETING) for i in range(100)]
    md = metadata_for(f"business:{shop}")
    procs.align(1.0)
    # The services' clock stands still while the burst is handled: all 100 arrive in one
    # second however long a loaded machine takes to serve them.
    with procs.frozen():
        futures = [st.delivery.SendMessage.future(r, metadata=md, timeout=60) for r in requests]
        accepted, refused = [], []
        for f in futures:
            try:
                accepted.append(f.result())
            except grpc.RpcError as e:
                refused.append(e)
    assert (len(accepted), len(refused)) == (80, 20)
    for e in refused:
        assert e.code() == EXHAUSTED, e
        d = details(e)
        assert d["ErrorInfo"].reason == "RATE_LIMITED"
        assert d["QuotaFailure"].violations[0].subject == f"business:{shop}"
        assert 0 < retry_delay(d) <= 1
    # One second, 80 messages; the refused ones left no message and no charge behind.
    seconds = {int(t.timestamp()) for t in _send_times(procs, f"business:{shop}")}
    assert len(seconds) == 1 and procs.count("messages", "sender = :s", s=f"business:{shop}") == 80
    assert st.money(shop) == (80 * PRICE_MARKETING, 0)
    # The next second takes messages again (to someone under the pair limit).
    procs.advance(1.0)
    assert st.raw_send(f"business:{shop}", f"user:{spare}", MARKETING).message_id


def test_pair_limit_per_person_per_minute(procs: ProcStack, st: Stack) -> None:
    shop = uid("pair")
    st.fund(shop, 10_000_000)
    one, other = _people(st, shop, 2)
    biz = f"business:{shop}"
    procs.align(60.0)
    for _ in range(10):
        st.raw_send(biz, f"user:{one}", MARKETING)
    with fails(EXHAUSTED, "PAIR_RATE_LIMITED") as d:
        st.raw_send(biz, f"user:{one}", MARKETING)
    assert d["QuotaFailure"].violations[0].subject == f"{biz}->user:{one}"
    assert 0 < retry_delay(d) <= 60
    # Another person is not affected; the next minute the first may be messaged again.
    st.raw_send(biz, f"user:{other}", MARKETING)
    procs.advance(60.0)
    st.raw_send(biz, f"user:{one}", MARKETING)
    assert procs.count("messages", "sender = :s", s=biz) == 12
    assert st.money(shop) == (12 * PRICE_MARKETING, 0)


def test_pair_limit_holds_for_a_burst_sent_at_once(procs: ProcStack, st: Stack) -> None:
    """16 sends to one person and 16 to others, all at once in one minute: group commits
    check a batch's pair counts just before the commit, and a batch that passes the limit
    runs again send by send, so exactly 10 reach the person and every other send goes."""
    shop = uid("pairburst")
    st.fund(shop, 100_000_000)
    one, *others = _people(st, shop, 17)
    to_one = [st.raw_send_request(f"user:{one}", MARKETING) for _ in range(16)]
    to_others = [st.raw_send_request(f"user:{p}", MARKETING) for p in others]
    md = metadata_for(f"business:{shop}")
    procs.align(60.0)
    with procs.frozen():
        futures = [
            (r in to_one, st.delivery.SendMessage.future(r, metadata=md, timeout=60))
            for r in [x for pair in zip(to_one, to_others, strict=True) for x in pair]
        ]
        outcomes: list[tuple[bool, str]] = []
        for is_one, f in futures:
            try:
                f.result()
                outcomes.append((is_one, "OK"))
            except grpc.RpcError as e:
                assert e.code() == EXHAUSTED, e
                outcomes.append((is_one, details(e)["ErrorInfo"].reason))
    assert sorted(o for is_one, o in outcomes if is_one) == ["OK"] * 10 + ["PAIR_RATE_LIMITED"] * 6
    assert [o for is_one, o in outcomes if not is_one] == ["OK"] * 16
    biz = f"business:{shop}"
    assert procs.count("messages", "sender = :s AND recipient = :r", s=biz, r=f"user:{one}") == 10
    assert procs.count("messages", "sender = :s", s=biz) == 26
    assert st.money(shop) == (26 * PRICE_MARKETING, 0)


def test_defaults_are_80_per_second_and_the_250_tier(st: Stack) -> None:
    shop = uid("fresh")
    limits = st.delivery.GetMessagingLimits(
        delivery_pb2.GetMessagingLimitsRequest(business_id=shop),
        metadata=metadata_for(f"business:{shop}"),
    ).limits
    assert (limits.messages_per_second, limits.tier) == (80, Tier.MESSAGING_TIER_250)
    assert {t: Limits(80, t).unique_people for t in Tier.values() if t} == {
        Tier.MESSAGING_TIER_50: 50,
        Tier.MESSAGING_TIER_250: 250,
        Tier.MESSAGING_TIER_2K: 2_000,
        Tier.MESSAGING_TIER_10K: 10_000,
        Tier.MESSAGING_TIER_100K: 100_000,
        Tier.MESSAGING_TIER_UNLIMITED: None,
    }


def test_unique_people_per_24_hours_by_tier(procs: ProcStack, st: Stack) -> None:
    """The smallest tier (50, an unverified business) keeps the run short; every tier is the
    same rule with another number (checked above)."""
    shop = uid("tier")
    biz = f"business:{shop}"
    st.fund(shop, 100_000_000)
    st.set_limits(shop, 1000, Tier.MESSAGING_TIER_50)
    st.bare_device(biz)
    people = _people(st, shop, 53)
    first, extra, in_window, next_day = people[:50], people[50], people[51], people[52]
    _parallel(lambda p: st.raw_send(biz, f"user:{p}", MARKETING), first)

    with fails(EXHAUSTED, "UNIQUE_PEOPLE_LIMITED") as d:
        st.raw_send(biz, f"user:{extra}", MARKETING)
    assert d["QuotaFailure"].violations[0].subject == biz
    assert "50 unique people" in d["QuotaFailure"].violations[0].description
    assert 23 * 3600 < retry_delay(d) <= 24 * 3600
    # Someone already counted today may be messaged again.
    st.raw_send(biz, f"user:{first[0]}", MARKETING)
    # A person who wrote first opened a customer-service window: not a new conversation.
    st.raw_send(f"user:{in_window}", biz, SERVICE)
    assert st.raw_send(biz, f"user:{in_window}", MARKETING).window_kind == WINDOW_CS
    assert procs.count("messages", "recipient = :r", r=f"user:{extra}") == 0

    # The next tier lets the 51st person in.
    st.set_limits(shop, 1000, Tier.MESSAGING_TIER_250)
    st.raw_send(biz, f"user:{extra}", MARKETING)
    # Back on 50 the day is full again, until 24 hours have passed.
    st.set_limits(shop, 1000, Tier.MESSAGING_TIER_50)
    with fails(EXHAUSTED, "UNIQUE_PEOPLE_LIMITED"):
        st.raw_send(biz, f"user:{next_day}", MARKETING)
    procs.advance(24 * 3600 + 1)
    st.raw_send(biz, f"user:{next_day}", MARKETING)
    assert procs.count("messages", "sender = :s", s=biz) == 54


def test_one_time_pre_keys_handed_out_exactly_once(st: Stack) -> None:
    person = uid("kim")
    kim = st.person(person, pre_keys=20)
    shops = [uid("shop") for _ in range(4)]
    for shop in shops:
        st.grant(person, shop, MARKETING)

    def fetch(i: int) -> bytes:
        response = st.delivery.GetPreKeyBundle(
            delivery_pb2.GetPreKeyBundleRequest(owner=f"user:{person}", category=MARKETING),
            metadata=metadata_for(f"business:{shops[i % 4]}"),
        )
        return bytes(response.bundles[0].one_time_pre_key)

    keys = _parallel(fetch, list(range(28)))
    handed = [k for k in keys if k]
    assert len(handed) == 20 and len(set(handed)) == 20
    assert keys.count(b"") == 8  # then only the signed prekey
    assert kim.pre_key_count() == 0
    # A refill tops the server's stock up again.
    assert kim.refill_pre_keys(minimum=5, target=10) == 10
    wait_until(lambda: kim.pre_key_count() == 10)
