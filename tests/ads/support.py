"""The ads test harness: consent, billing and ads in-process, sharing one movable clock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import grpc

from bizmsg.ads.v1 import ads_pb2 as pb
from bizmsg.ads.v1 import ads_pb2_grpc
from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.testing import ServiceThread, error_details, expect_error, metadata_for

ADMIN = "admin"
# Settlement every 0.2 s: an outage test sees pending charges retried within a second.
ADS_ENV = {"BIZMSG_ADS_SETTLE_INTERVAL_SECONDS": "0.2", "BIZMSG_ADS_CURRENCY": "EUR"}


def rid() -> str:
    return uuid.uuid4().hex


def wait_until(check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `check` until it returns something truthy (background jobs are asynchronous)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(0.05)
    return value


def eur(micros: int) -> common_pb2.Money:
    return common_pb2.Money(amount_micros=micros, currency_code="EUR")


details = error_details


def fails(
    code: grpc.StatusCode, reason: str | None = None
) -> AbstractContextManager[dict[str, Any]]:
    """Expect the block's call to fail with `code` (and ads' ErrorInfo `reason`); yields details."""
    return expect_error(code, reason, domain="ads.bizmsg")


def bad_fields(got: dict[str, Any]) -> set[str]:
    return {v.field for v in got["BadRequest"].field_violations}


@dataclass
class Stack:
    """Running consent + billing + ads (one or more ads replicas on one database)."""

    clock: ManualClock
    consent: ServiceThread
    billing: ServiceThread
    ads: list[ServiceThread]
    _channels: list[grpc.Channel] = field(default_factory=list)
    # Threads started by restarts (the fixture stops the ones it started).
    _restarted: list[ServiceThread] = field(default_factory=list)

    def _stub(self, target: str, cls: Any) -> Any:
        ch = grpc.insecure_channel(target)
        self._channels.append(ch)
        return cls(ch)

    def __post_init__(self) -> None:
        self._stubs()

    def _stubs(self) -> None:
        self.ads_stubs = [self._stub(a.target, ads_pb2_grpc.AdsServiceStub) for a in self.ads]
        self.billing_stub = self._stub(self.billing.target, billing_pb2_grpc.BillingServiceStub)
        self.consent_stub = self._stub(self.consent.target, consent_pb2_grpc.ConsentServiceStub)

    def close(self) -> None:
        for ch in self._channels:
            ch.close()
        for t in reversed(self._restarted):
            t.stop()

    def restart_billing_and_ads(self) -> None:
        """Billing again on its database (after `self.billing.stop()`), and the ads replicas
        restarted on theirs to reach it: a new ServiceThread listens on a new port."""
        from ads_svc.app import DEFINITION as ADS
        from billing_svc.app import DEFINITION as BILLING

        url = self.billing.settings.database_url("billing")
        self.billing = ServiceThread(BILLING, database_url=url, clock=self.clock).start()
        self._restarted.append(self.billing)
        deps = {"consent": self.consent.target, "billing": self.billing.target}
        replicas = []
        for old in self.ads:
            old.stop()
            replicas.append(
                ServiceThread(
                    ADS,
                    database_url=old.settings.database_url("ads"),
                    clock=self.clock,
                    env=ADS_ENV,
                    dependency_targets=deps,
                ).start()
            )
        self._restarted.extend(replicas)
        self.ads = replicas
        self._stubs()

    def impression_state(self, impression_id: str) -> str:
        """The charge state of an impression, read from the ads database."""
        from sqlalchemy import select

        from ads_svc.models import ImpressionRow

        async def read() -> str:
            async with self.ads[0].runtime.db.read() as session:
                return str(
                    (
                        await session.execute(
                            select(ImpressionRow.state).where(ImpressionRow.id == impression_id)
                        )
                    ).scalar_one()
                )

        state: str = self.ads[0].run(read())
        return state

    def call(self, principal: str, method: str, request: Any, replica: int = 0) -> Any:
        stub = self.ads_stubs[replica % len(self.ads_stubs)]
        return getattr(stub, method)(request, metadata=metadata_for(principal), timeout=30)

    # billing

    def wallet(self, advertiser: str, funds: int) -> str:
        md = metadata_for(ADMIN)
        account = self.billing_stub.CreateAccount(
            billing_pb2.CreateAccountRequest(
                request_id=rid(),
                owner=f"advertiser:{advertiser}",
                kind=billing_pb2.ACCOUNT_KIND_ADVERTISER_WALLET,
                currency_code="EUR",
            ),
            metadata=md,
        ).account
        if funds:
            self.billing_stub.TopUp(
                billing_pb2.TopUpRequest(
                    request_id=rid(),
                    account_id=account.account_id,
                    amount=eur(funds),
                    external_reference="test top-up",
                ),
                metadata=md,
            )
        return str(account.account_id)

    def ad_transfers(self, account_id: str, reference: str) -> int:
        """How many of the account's transfers carry this reference (an ad event id)."""
        transfers = self.billing_stub.ListTransfers(
            billing_pb2.ListTransfersRequest(account_id=account_id, page_size=1000),
            metadata=metadata_for(ADMIN),
        ).transfers
        return sum(1 for t in transfers if t.reference == reference)

    def debited(self, account_id: str) -> int:
        acc = self.billing_stub.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=metadata_for(ADMIN)
        ).account
        return int(acc.debits_posted.amount_micros)

    # consent

    def personalise(self, person: str, on: bool, interests: Sequence[str] = ()) -> None:
        self.consent_stub.SetAdPreferences(
            consent_pb2.SetAdPreferencesRequest(
                request_id=rid(),
                preferences=consent_pb2.AdPreferences(
                    person_id=person, personalization_enabled=on, interests=list(interests)
                ),
            ),
            metadata=metadata_for(f"user:{person}"),
        )

    # ads

    def campaign_msg(self, advertiser: str, account: str, **kw: Any) -> pb.Campaign:
        fields: dict[str, Any] = {
            "advertiser_id": advertiser,
            "account_id": account,
            "business_id": "acme",
            "display_name": "spring sale",
            "creative": pb.Creative(
                headline="Bikes on sale",
                body="Message us for 20% off.",
                media_uri="https://cdn.example/bike.jpg",
                call_to_action=pb.CALL_TO_ACTION_SEND_MESSAGE,
            ),
            "targeting": pb.Targeting(countries=["DE"], languages=["de"]),
            "bid_type": pb.BID_TYPE_CPM,
            "bid": eur(2_000_000),
            "daily_budget": eur(1_000_000),
            "lifetime_budget": eur(10_000_000),
            "frequency_cap": pb.FrequencyCap(),
        }
        fields.update(kw)
        return pb.Campaign(**fields)

    def create(
        self, advertiser: str, account: str, start: datetime | None = None, **kw: Any
    ) -> pb.Campaign:
        msg = self.campaign_msg(advertiser, account, **kw)
        if start is not None:
            msg.start_time.FromDatetime(start)
        resp = self.call(
            f"advertiser:{advertiser}",
            "CreateCampaign",
            pb.CreateCampaignRequest(request_id=rid(), campaign=msg),
        )
        return resp.campaign

    def get(self, campaign_id: str, principal: str = ADMIN) -> pb.Campaign:
        return self.call(
            principal, "GetCampaign", pb.GetCampaignRequest(campaign_id=campaign_id)
        ).campaign

    def serve(
        self,
        person: str,
        *,
        country: str = "DE",
        language: str = "de",
        interests: Sequence[str] = (),
        replica: int = 0,
        request_id: str | None = None,
    ) -> pb.ServeAdResponse:
        return self.call(
            f"user:{person}",
            "ServeAd",
            pb.ServeAdRequest(
                request_id=request_id or rid(),
                person_id=person,
                placement=pb.PLACEMENT_STATUS,
                context=pb.AdContext(country=country, language=language, interests=list(interests)),
            ),
            replica,
        )

    def click(self, person: str, impression_id: str) -> pb.RecordClickResponse:
        return self.call(
            f"user:{person}",
            "RecordClick",
            pb.RecordClickRequest(request_id=rid(), impression_id=impression_id),
        )

    def stats(self, campaign_id: str) -> pb.GetCampaignStatsResponse:
        return self.call(
            ADMIN, "GetCampaignStats", pb.GetCampaignStatsRequest(campaign_id=campaign_id)
        )
