"""ServeAd: gather candidates, filter, run the auction, reserve the budget, charge.

Budget reservation happens in the database (store.reserve, a conditional UPDATE) before
billing is asked, so budgets hold across concurrent serves and replicas; a refused
charge gives the reservation back and the next-ranked bidder gets its chance.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from ads_svc import auction, eligibility, pacing, store
from ads_svc.convert import candidate, money
from ads_svc.eligibility import NoFill
from ads_svc.models import CHARGED, FAILED, PENDING, CampaignRow, ImpressionRow
from ads_svc.partners import Billing, Charge, Consent
from ads_svc.settings import AdsSettings
from bizmsg.ads.v1 import ads_pb2
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import Unavailable
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.ids import new_id
from bizmsg.kit.storage import Database

METHOD = "ServeAd"

NO_FILL_REASONS = {
    NoFill.NO_MATCHING_CAMPAIGN: ads_pb2.NO_FILL_REASON_NO_MATCHING_CAMPAIGN,
    NoFill.FREQUENCY_CAPPED: ads_pb2.NO_FILL_REASON_FREQUENCY_CAPPED,
    NoFill.BUDGET_EXHAUSTED: ads_pb2.NO_FILL_REASON_BUDGET_EXHAUSTED,
    NoFill.PACED: ads_pb2.NO_FILL_REASON_PACED,
    NoFill.ADVERTISER_CANNOT_PAY: ads_pb2.NO_FILL_REASON_ADVERTISER_CANNOT_PAY,
    NoFill.BELOW_RESERVE: ads_pb2.NO_FILL_REASON_BELOW_RESERVE,
}


@dataclass
class Server:
    """Everything ServeAd needs; one per service process."""

    db: Database
    clock: Clock
    idem: Idempotency
    consent: Consent
    billing: Billing
    settings: AdsSettings
    rng: random.Random

    async def serve(self, request: ads_pb2.ServeAdRequest) -> ads_pb2.ServeAdResponse:
        async with self.db.read() as session:
            stored = await self.idem.lookup(session, METHOD, request, ads_pb2.ServeAdResponse)
        if stored is not None:
            return stored

        prefs = await self.consent.ad_preferences(request.person_id)
        who = eligibility.audience(
            prefs.personalised, prefs.interests, list(request.context.interests)
        )
        now = self.clock.now()
        async with self.db.read() as session:
            rows = await store.candidates(
                session,
                request.context.country,
                request.context.language,
                now,
                self.settings.candidate_limit,
            )
            capped = [r for r in rows if r.cap_max_impressions > 0]
            longest = max((r.cap_period_days for r in capped), default=0)
            recent = await store.recent_impressions(
                session, request.person_id, [r.id for r in capped], now - timedelta(days=longest)
            )
        by_id = {r.id: r for r in rows}
        passed, reason = eligibility.eligible(
            [candidate(r) for r in rows], who, recent, now, self.rng.random
        )
        ranked = auction.rank(
            [
                auction.Bidder(c.campaign_id, c.kind, c.bid_micros, c.impressions, c.clicks)
                for c in passed
            ],
            self.settings.reserve_micros,
            seed=f"{request.person_id}|{request.request_id}",
        )
        for position, bidder in enumerate(ranked):
            price = auction.price(ranked, position, self.settings.reserve_micros)
            outcome = await self._try(request, by_id[bidder.bidder.campaign_id], price)
            if isinstance(outcome, ads_pb2.ServeAdResponse):
                return outcome
            reason = outcome
        return await self._no_fill(request, reason)

    async def _no_fill(
        self, request: ads_pb2.ServeAdRequest, reason: NoFill
    ) -> ads_pb2.ServeAdResponse:
        response = ads_pb2.ServeAdResponse(no_fill=ads_pb2.NoFill(reason=NO_FILL_REASONS[reason]))
        return await self._save(request, response)

    async def _save(
        self, request: ads_pb2.ServeAdRequest, response: ads_pb2.ServeAdResponse
    ) -> ads_pb2.ServeAdResponse:
        try:
            async with self.db.write() as session:
                await self.idem.save(session, METHOD, request, response)
        except IntegrityError:
            # A concurrent retry with the same request_id answered first: give its answer.
            async with self.db.read() as session:
                stored = await self.idem.lookup(session, METHOD, request, type(response))
            if stored is not None:
                return stored
        return response

    async def _try(
        self, request: ads_pb2.ServeAdRequest, c: CampaignRow, price: auction.Price
    ) -> ads_pb2.ServeAdResponse | NoFill:
        """Serve campaign `c` at `price`, or say why it could not be served after all."""
        now = self.clock.now()
        today = pacing.day_key(now)
        # CPC: the impression is free, so ask billing up front whether a click could be paid.
        if (
            price.click_micros > 0
            and await self.billing.can_pay(c.account_id, price.click_micros) is False
        ):
            await self._mark_unfunded(c.id)
            return NoFill.ADVERTISER_CANNOT_PAY
        impression_id = new_id()
        ad = ads_pb2.Ad(
            impression_id=impression_id,
            campaign_id=c.id,
            business_id=c.business_id,
            creative=ads_pb2.Creative(
                headline=c.headline,
                body=c.body,
                media_uri=c.media_uri,
                call_to_action=c.call_to_action,  # type: ignore[arg-type]
            ),
            bid_type=c.bid_type,  # type: ignore[arg-type]
            price=money(price.impression_micros, c.currency_code),
            click_price=money(price.click_micros, c.currency_code),
        )
        response = ads_pb2.ServeAdResponse(ad=ad)
        owed = price.impression_micros > 0
        async with self.db.write() as session:
            if c.cap_max_impressions > 0:
                # Re-count under the person's lock: concurrent serves cannot both pass the cap.
                await store.lock_person(session, request.person_id)
                seen = await store.count_recent(
                    session, request.person_id, c.id, now - timedelta(days=c.cap_period_days)
                )
                if seen >= c.cap_max_impressions:
                    return NoFill.FREQUENCY_CAPPED
            reserved = await store.reserve(
                session,
                c.id,
                amount=price.impression_micros,
                room=max(price.impression_micros, price.click_micros),
                today=today,
                impressions=1,
            )
            if not reserved:
                return NoFill.BUDGET_EXHAUSTED
            session.add(
                ImpressionRow(
                    id=impression_id,
                    campaign_id=c.id,
                    account_id=c.account_id,
                    person_id=request.person_id,
                    business_id=c.business_id,
                    placement=int(request.placement),
                    serve_time=now,
                    day=today,
                    price_micros=price.impression_micros,
                    click_price_micros=price.click_micros,
                    currency_code=c.currency_code,
                    state=PENDING if owed else CHARGED,
                )
            )
            await store.add_stats(
                session, c.id, today, impressions=1, spend=price.impression_micros
            )
            if not owed:
                await self.idem.save(session, METHOD, request, response)
        if not owed:
            return response

        charge = await self.billing.charge(
            impression_id, c.id, c.account_id, False, price.impression_micros, c.currency_code
        )
        if charge is Charge.POSTED:
            try:
                async with self.db.write() as session:
                    await store.settle_impression(session, impression_id, CHARGED)
                    await self.idem.save(session, METHOD, request, response)
            except IntegrityError:
                # A concurrent retry with this request_id answered first: mark, then replay.
                async with self.db.write() as session:
                    await store.settle_impression(session, impression_id, CHARGED)
                return await self._save(request, response)
            return response
        if charge is Charge.REFUSED:
            await refund_impression(self.db, impression_id, c.id, price.impression_micros, today)
            await self._mark_unfunded(c.id)
            return NoFill.ADVERTISER_CANNOT_PAY
        # Unknown outcome: the impression stays PENDING and the settlement job finishes it.
        raise Unavailable("BILLING_UNAVAILABLE", "billing did not answer; retry the request")

    async def _mark_unfunded(self, campaign_id: str) -> None:
        until = self.clock.now() + timedelta(seconds=self.settings.unfunded_backoff_seconds)
        async with self.db.write() as session:
            await store.set_unfunded(session, campaign_id, until)


async def refund_impression(
    db: Database, impression_id: str, campaign_id: str, micros: int, day: str
) -> None:
    """Give back the budget of an impression billing refused, and stop counting it."""
    async with db.write() as session:
        # Only the one that moves it out of PENDING gives the budget back.
        if not await store.settle_impression(session, impression_id, FAILED):
            return
        await store.release(session, campaign_id, amount=micros, day=day, impressions=1)
        await store.add_stats(session, campaign_id, day, impressions=-1, spend=-micros)
