"""Seeding through the services' own RPCs, as their real callers would: billing (admin) opens
wallets, tops them up and publishes a rate card; people grant consent (as themselves) and
publish prekeys; admin lifts the businesses' messaging limits; an advertiser opens campaigns.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import grpc
import xeddsa

from bizmsg.ads.v1 import ads_pb2, ads_pb2_grpc
from bizmsg.bench.stack import BENCH_MESSAGES_PER_SECOND
from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit.ids import new_id
from bizmsg.kit.testing import metadata_for
from bizmsg.kit.timeutil import to_timestamp
from bizmsg.sdk.keys import verify_signed_pre_key

CURRENCY = "EUR"  # ads_svc's default auction currency; one currency keeps the seed simple
COUNTRY = "DE"
LANGUAGE = "de"
DEVICE = "phone"
ADVERTISER = "bench-adco"
EUROS = 1_000_000  # micros
T = TypeVar("T")


def person_id(i: int) -> str:
    """Fixed-width ids, so the shim's 6-digit pick marker addresses them (p000000...)."""
    return f"p{i:06d}"


def business_id(i: int) -> str:
    return f"bench-b{i:02d}"


@dataclass(frozen=True)
class Seeded:
    people: int
    businesses: list[str]
    campaigns: list[str]
    seconds: float


@dataclass(frozen=True)
class DeviceKeys:
    """One valid key set (identity key, XEdDSA-signed prekey), published for every bench person:
    the server checks the signature, never that keys differ between people."""

    identity_key: bytes
    signed_pre_key: bytes
    signature: bytes

    @classmethod
    def generate(cls) -> DeviceKeys:
        # xeddsa 1.2's priv_force_sign(priv, False) sometimes leaves the Ed25519 sign bit set,
        # and the server (like X3DH) verifies against the sign-0 key: retry until it verifies.
        while True:
            priv = xeddsa.priv_force_sign(xeddsa.seed_to_priv(os.urandom(32)), False)
            spk = xeddsa.priv_to_curve25519_pub(xeddsa.seed_to_priv(os.urandom(32)))
            keys = cls(
                xeddsa.priv_to_curve25519_pub(priv),
                spk,
                xeddsa.ed25519_priv_sign(priv, b"\x05" + spk, os.urandom(64)),
            )
            if verify_signed_pre_key(keys.identity_key, keys.signed_pre_key, keys.signature):
                return keys


async def _bounded(calls: Iterable[Callable[[], Awaitable[T]]], limit: int = 16) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[T]]) -> T:
        async with gate:
            return await call()

    return await asyncio.gather(*(one(c) for c in calls))


def _md(principal: str) -> list[tuple[str, str]]:
    return metadata_for(principal)


def _rid() -> str:
    return "seed-" + new_id()


async def seed(
    targets: Mapping[str, str],
    *,
    people: int,
    businesses: int,
    campaigns: int,
    progress: Callable[[int], None] | None = None,
) -> Seeded:
    started = asyncio.get_running_loop().time()
    tick = progress or (lambda n: None)
    channels = {name: grpc.aio.insecure_channel(t) for name, t in targets.items()}
    try:
        billing = billing_pb2_grpc.BillingServiceStub(channels["billing"])
        consent = consent_pb2_grpc.ConsentServiceStub(channels["consent"])
        delivery = delivery_pb2_grpc.DeliveryServiceStub(channels["delivery"])
        ads = ads_pb2_grpc.AdsServiceStub(channels["ads"])
        admin = _md("admin")
        await _rate_card(billing, admin)
        biz = [business_id(i) for i in range(businesses)]
        for b in biz:
            await _wallet(billing, admin, f"business:{b}", billing_pb2.ACCOUNT_KIND_BUSINESS_WALLET)
            await delivery.UpdateMessagingLimits(
                delivery_pb2.UpdateMessagingLimitsRequest(
                    request_id=_rid(),
                    limits=delivery_pb2.MessagingLimits(
                        business_id=b,
                        messages_per_second=BENCH_MESSAGES_PER_SECOND,
                        tier=delivery_pb2.MESSAGING_TIER_UNLIMITED,
                    ),
                ),
                metadata=admin,
            )
        tick(len(biz))
        keys = DeviceKeys.generate()

        async def person(i: int) -> None:
            pid = person_id(i)
            md = _md(f"user:{pid}")
            await delivery.PublishKeys(
                delivery_pb2.PublishKeysRequest(
                    request_id=_rid(),
                    device_id=DEVICE,
                    identity_key=keys.identity_key,
                    signed_pre_key=delivery_pb2.SignedPreKey(
                        public_key=keys.signed_pre_key, signature=keys.signature
                    ),
                    country_code=COUNTRY,
                ),
                metadata=md,
            )
            for b in biz:
                await consent.GrantConsent(
                    consent_pb2.GrantConsentRequest(
                        request_id=_rid(),
                        person_id=pid,
                        business_id=b,
                        all_categories=True,
                        collection_method=consent_pb2.COLLECTION_METHOD_WEB_FORM,
                        notice=consent_pb2.Notice(
                            text="Offers from us by message; stop any time.", locale="en-GB"
                        ),
                    ),
                    metadata=md,
                )
            tick(1)

        await _bounded([lambda i=i: person(i) for i in range(people)])  # type: ignore[misc]
        campaign_ids = await _campaigns(billing, ads, admin, biz, campaigns)
        tick(len(campaign_ids))
    finally:
        for ch in channels.values():
            await ch.close()
    return Seeded(people, biz, campaign_ids, asyncio.get_running_loop().time() - started)


async def _rate_card(billing: Any, admin: list[tuple[str, str]]) -> None:
    prices = {
        common_pb2.CATEGORY_MARKETING: 25_000,
        common_pb2.CATEGORY_UTILITY: 4_000,
        common_pb2.CATEGORY_AUTHENTICATION: 3_000,
    }
    await billing.SetRateCard(
        billing_pb2.SetRateCardRequest(
            request_id=_rid(),
            currency_code=CURRENCY,
            entries=[
                billing_pb2.RateCardEntry(
                    category=category,
                    price=common_pb2.Money(amount_micros=micros, currency_code=CURRENCY),
                )
                for category, micros in prices.items()
            ],
        ),
        metadata=admin,
    )


async def _wallet(
    billing: Any, admin: list[tuple[str, str]], owner: str, kind: billing_pb2.AccountKind.ValueType
) -> str:
    created = await billing.CreateAccount(
        billing_pb2.CreateAccountRequest(
            request_id=_rid(),
            owner=owner,
            kind=kind,
            currency_code=CURRENCY,
        ),
        metadata=admin,
    )
    account_id: str = created.account.account_id
    # Enough for tens of millions of messages: running dry is not what the bench measures.
    await billing.TopUp(
        billing_pb2.TopUpRequest(
            request_id=_rid(),
            account_id=account_id,
            amount=common_pb2.Money(amount_micros=1_000_000 * EUROS, currency_code=CURRENCY),
            external_reference="bench",
        ),
        metadata=admin,
    )
    return account_id


async def _campaigns(
    billing: Any, ads: Any, admin: list[tuple[str, str]], biz: list[str], count: int
) -> list[str]:
    if count == 0:
        return []
    account = await _wallet(
        billing, admin, f"advertiser:{ADVERTISER}", billing_pb2.ACCOUNT_KIND_ADVERTISER_WALLET
    )
    md = _md(f"advertiser:{ADVERTISER}")
    start = datetime.now(UTC) - timedelta(minutes=1)
    ids = []
    for i in range(count):
        resp = await ads.CreateCampaign(
            ads_pb2.CreateCampaignRequest(
                request_id=_rid(),
                campaign=ads_pb2.Campaign(
                    advertiser_id=ADVERTISER,
                    account_id=account,
                    business_id=biz[i % len(biz)],
                    display_name=f"bench campaign {i}",
                    creative=ads_pb2.Creative(
                        headline=f"Offer {i}",
                        body="Chat with us",
                        call_to_action=ads_pb2.CALL_TO_ACTION_SEND_MESSAGE,
                    ),
                    targeting=ads_pb2.Targeting(countries=[COUNTRY], languages=[LANGUAGE]),
                    bid_type=ads_pb2.BID_TYPE_CPM,
                    # Different bids give the auction a real second price.
                    bid=common_pb2.Money(amount_micros=(2 + i) * EUROS, currency_code=CURRENCY),
                    daily_budget=common_pb2.Money(
                        amount_micros=100_000 * EUROS, currency_code=CURRENCY
                    ),
                    lifetime_budget=common_pb2.Money(
                        amount_micros=500_000 * EUROS, currency_code=CURRENCY
                    ),
                    start_time=to_timestamp(start),
                ),
            ),
            metadata=md,
        )
        ids.append(resp.campaign.campaign_id)
    return ids
