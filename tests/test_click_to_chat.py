"""Click-to-chat across all four services, in-process on one backend with one movable clock.

An advertiser runs a campaign for business B; a person is served the ad and clicks it (the
click is billed to the advertiser and returns a referral); the person messages B through
delivery with that referral (delivery tells consent, which arms the free-entry entry point);
B's first reply opens the 72-hour free-entry window, inside which B's replies are free in
billing, and after which marketing and utility replies are charged again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import pytest

from ads_svc.app import DEFINITION as ADS
from billing_svc.app import DEFINITION as BILLING
from bizmsg.ads.v1 import ads_pb2, ads_pb2_grpc
from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.testing import ServiceThread, metadata_for
from bizmsg.sdk import Client
from consent_svc.app import DEFINITION as CONSENT
from delivery_svc.app import DEFINITION as DELIVERY
from tests.ads.support import wait_until
from tests.delivery.helpers import PRICE_MARKETING, PRICE_UTILITY, Stack

MARKETING = common_pb2.CATEGORY_MARKETING
UTILITY = common_pb2.CATEGORY_UTILITY
SERVICE = common_pb2.CATEGORY_SERVICE
FREE_ENTRY = common_pb2.WINDOW_KIND_FREE_ENTRY
# Fast background jobs, so outboxes (capture, RecordBusinessReply) land within the test.
DELIVERY_ENV = {
    "BIZMSG_DELIVERY_RELAY_INTERVAL": "0.05",
    "BIZMSG_DELIVERY_SWEEP_INTERVAL": "0.1",
    "BIZMSG_DELIVERY_POLL_INTERVAL": "0.2",
}
ADS_ENV = {"BIZMSG_ADS_SETTLE_INTERVAL_SECONDS": "0.2", "BIZMSG_ADS_CURRENCY": "EUR"}


def rid() -> str:
    return uuid.uuid4().hex


def eur(micros: int) -> common_pb2.Money:
    return common_pb2.Money(amount_micros=micros, currency_code="EUR")


@dataclass
class Platform:
    clock: ManualClock
    st: Stack  # consent, billing and delivery clients (tests/delivery/helpers)
    ads: ads_pb2_grpc.AdsServiceStub

    def advertiser_wallet(self, advertiser: str, funds: int) -> str:
        md = metadata_for("admin")
        account = self.st.billing.CreateAccount(
            billing_pb2.CreateAccountRequest(
                request_id=rid(),
                owner=f"advertiser:{advertiser}",
                kind=billing_pb2.ACCOUNT_KIND_ADVERTISER_WALLET,
                currency_code="EUR",
            ),
            metadata=md,
        ).account
        self.st.billing.TopUp(
            billing_pb2.TopUpRequest(
                request_id=rid(),
                account_id=account.account_id,
                amount=eur(funds),
                external_reference="card payment",
            ),
            metadata=md,
        )
        return str(account.account_id)

    def debited(self, account_id: str) -> int:
        account = self.st.billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=metadata_for("admin")
        ).account
        return int(account.debits_posted.amount_micros)

    def window(self, business: str, person: str) -> consent_pb2.CheckConsentResponse:
        """What consent tells the business about messaging the person now."""
        response: consent_pb2.CheckConsentResponse = self.st.consent.CheckConsent(
            consent_pb2.CheckConsentRequest(
                business_id=business, person_id=person, category=MARKETING
            ),
            metadata=metadata_for(f"business:{business}"),
        )
        return response


@pytest.fixture
def platform(
    database_url_factory: Callable[[str], str], clock: ManualClock, tmp_path: Path
) -> Iterator[Platform]:
    with ExitStack() as stack:
        consent = stack.enter_context(
            ServiceThread(CONSENT, database_url=database_url_factory("consent"), clock=clock)
        )
        billing = stack.enter_context(
            ServiceThread(BILLING, database_url=database_url_factory("billing"), clock=clock)
        )
        deps = {"consent": consent.target, "billing": billing.target}
        delivery = stack.enter_context(
            ServiceThread(
                DELIVERY,
                database_url=database_url_factory("delivery"),
                clock=clock,
                env=DELIVERY_ENV,
                dependency_targets=deps,
            )
        )
        ads = stack.enter_context(
            ServiceThread(
                ADS,
                database_url=database_url_factory("ads"),
                clock=clock,
                env=ADS_ENV,
                dependency_targets=deps,
            )
        )
        st = Stack(
            consent.target,
            billing.target,
            delivery.target,
            advance=clock.advance,
            store_root=tmp_path / "clients",
        )
        stack.callback(st.close)
        ads_channel = stack.enter_context(grpc.insecure_channel(ads.target))
        st.rate_card()
        yield Platform(clock, st, ads_pb2_grpc.AdsServiceStub(ads_channel))


def reply(biz: Client, person: Client, category: int, text: bytes) -> tuple[int, bool]:
    """B sends; the person receives, checks and acks it. Returns (price, free) as billing's
    authorization gave them to delivery."""
    sent = biz.send(person.principal, text, category=category)
    [got] = list(person.receive())
    assert got.plaintext == text and got.message_id == sent.message_id
    person.ack([got.message_id])
    return int(sent.price.amount_micros), bool(sent.free)


def test_an_ad_click_opens_a_free_conversation_for_72_hours(platform: Platform) -> None:
    p, st, clock = platform, platform.st, platform.clock
    shop, pat = "bikeshop", "pat"
    # The advertiser's CPC campaign for the bike shop.
    adv_account = p.advertiser_wallet("agency", 1_000_000)
    campaign = p.ads.CreateCampaign(
        ads_pb2.CreateCampaignRequest(
            request_id=rid(),
            campaign=ads_pb2.Campaign(
                account_id=adv_account,
                business_id=shop,
                display_name="spring sale",
                creative=ads_pb2.Creative(
                    headline="Bikes on sale",
                    body="Message us for 20% off.",
                    call_to_action=ads_pb2.CALL_TO_ACTION_SEND_MESSAGE,
                ),
                targeting=ads_pb2.Targeting(countries=["DE"], languages=["de"]),
                bid_type=ads_pb2.BID_TYPE_CPC,
                bid=eur(200_000),
                daily_budget=eur(1_000_000),
                lifetime_budget=eur(10_000_000),
            ),
        ),
        metadata=metadata_for("advertiser:agency"),
    ).campaign
    shop_wallet = st.fund(shop, 1_000_000)
    biz = st.business(shop)
    person = st.person(pat)

    # Served and clicked: the click is billed to the advertiser and carries a referral.
    ad = p.ads.ServeAd(
        ads_pb2.ServeAdRequest(
            request_id=rid(),
            person_id=pat,
            placement=ads_pb2.PLACEMENT_STATUS,
            context=ads_pb2.AdContext(country="DE", language="de"),
        ),
        metadata=metadata_for(f"user:{pat}"),
    ).ad
    assert ad.campaign_id == campaign.campaign_id and ad.business_id == shop
    click = p.ads.RecordClick(
        ads_pb2.RecordClickRequest(request_id=rid(), impression_id=ad.impression_id),
        metadata=metadata_for(f"user:{pat}"),
    )
    assert click.business_id == shop and click.referral.campaign_id == campaign.campaign_id
    assert click.chat_link == f"bizmsg://chat/{shop}?referral={click.click_id}"
    # A lone bidder's click costs the reserve over its CTR: 100,000 / (1000 * 2 %).
    assert click.price == eur(5000) and p.debited(adv_account) == 5000

    # The person opens the chat from the link: the first message carries the referral.
    first = person.send(f"business:{shop}", b"Hi, is the offer still on?", referral=click.referral)
    assert first.free and first.price.amount_micros == 0
    [got] = list(biz.receive())
    assert got.plaintext == b"Hi, is the offer still on?"
    assert got.referral is not None and got.referral.click_id == click.click_id
    biz.ack([got.message_id])
    assert p.window(shop, pat).free_entry_pending
    # In the chat the person opts in to offers and order updates.
    st.consent.GrantConsent(
        consent_pb2.GrantConsentRequest(
            request_id=rid(),
            person_id=pat,
            business_id=shop,
            categories=[MARKETING, UTILITY],
            collection_method=consent_pb2.COLLECTION_METHOD_AD_CLICK,
            notice=consent_pb2.Notice(text="Offers and order updates from us.", locale="de-DE"),
            collection_reference=click.click_id,
        ),
        metadata=metadata_for(f"user:{pat}"),
    )

    # B's first reply, an hour later, opens the 72-hour free-entry window (consent records
    # it from delivery's outbox).
    clock.advance(timedelta(hours=1))
    opened_at = clock.now()
    assert reply(biz, person, MARKETING, b"Yes! 20% off all week.") == (0, True)
    wait_until(lambda: not p.window(shop, pat).free_entry_pending)
    w = p.window(shop, pat).window
    assert w.kind == FREE_ENTRY
    assert w.expire_time.ToDatetime(tzinfo=opened_at.tzinfo) == opened_at + timedelta(hours=72)

    # Long after the 24-hour customer-service window closed, still inside the 72 hours:
    # marketing and utility replies are free, and the wallet does not move.
    clock.set(opened_at + timedelta(hours=71))
    assert reply(biz, person, MARKETING, b"Last day of the sale!") == (0, True)
    assert reply(biz, person, UTILITY, b"Your bike is ready.") == (0, True)
    wait_until(lambda: st.money(shop) == (0, 0))
    wallet = st.wallet(shop)
    assert wallet.debits_posted.amount_micros == 0 and wallet.debits_pending.amount_micros == 0

    # The window closed: marketing and utility are charged by the rate card again, and
    # captured once delivered; free-form replies need a new message from the person.
    clock.set(opened_at + timedelta(hours=72, minutes=1))
    assert p.window(shop, pat).window.kind != FREE_ENTRY
    assert reply(biz, person, MARKETING, b"New models in store.") == (PRICE_MARKETING, False)
    assert reply(biz, person, UTILITY, b"Your invoice.") == (PRICE_UTILITY, False)
    wait_until(lambda: st.money(shop) == (0, PRICE_MARKETING + PRICE_UTILITY))
    assert st.wallet(shop).account_id == shop_wallet
    with pytest.raises(grpc.RpcError) as refused:
        biz.send(person.principal, b"anything else?", category=SERVICE)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The ad side is unchanged by the conversation: one click, charged once.
    assert p.debited(adv_account) == 5000
