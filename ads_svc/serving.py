"""ServeAd: gather candidates, filter, run the auction, reserve the budget, charge.

The hot path is single reads outside any transaction (the replay check, the first page of
candidates best first, and the person's recent impressions of the capped ones among them, in
a read of their own: see shortlist.py, which reads further pages only when a serve needs more
bidders), the consent call only when a candidate reached targets interests, one write in a
group commit with other serves (cap re-count, budget reservation, the impression, the day's
stats and the stored response: Database.write_batched), and billing's ChargeAdEvent when the
impression has a price (on a stream: partners.Billing). Budget reservation happens in the
database (store.reserve_impression, a conditional UPDATE) before billing is asked, so budgets
hold across concurrent serves and replicas.

Billing's answer decides what follows:
- posted: the impression is noted for the batched PENDING -> CHARGED update;
- refused (the advertiser cannot pay): the reservation and the stored response are undone,
  the campaign is skipped for a while, and the next-ranked bidder gets its chance;
- no answer (billing down or slow): the ad is served anyway. Its impression stays PENDING,
  an outbox row in effect, and the settlement job charges it with the same request_id once
  billing is back, so the charge lands exactly once and nothing is lost.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ads_svc import auction, eligibility, pacing, store
from ads_svc.confirmations import Confirmations
from ads_svc.convert import candidate, money
from ads_svc.eligibility import Audience, Candidate, NoFill
from ads_svc.models import CHARGED, FAILED, IDEMPOTENCY, PENDING
from ads_svc.partners import Billing, Charge, Consent
from ads_svc.settings import AdsSettings
from ads_svc.shortlist import Page, Shortlist, first_page_limit
from ads_svc.store import AnyRow
from bizmsg.ads.v1 import ads_pb2
from bizmsg.kit import idempotency
from bizmsg.kit.auth import current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import Aborted
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.ids import new_id
from bizmsg.kit.storage import Database

log = logging.getLogger("ads_svc.serving")

METHOD = "ServeAd"

NO_FILL_REASONS = {
    NoFill.NO_MATCHING_CAMPAIGN: ads_pb2.NO_FILL_REASON_NO_MATCHING_CAMPAIGN,
    NoFill.FREQUENCY_CAPPED: ads_pb2.NO_FILL_REASON_FREQUENCY_CAPPED,
    NoFill.BUDGET_EXHAUSTED: ads_pb2.NO_FILL_REASON_BUDGET_EXHAUSTED,
    NoFill.PACED: ads_pb2.NO_FILL_REASON_PACED,
    NoFill.ADVERTISER_CANNOT_PAY: ads_pb2.NO_FILL_REASON_ADVERTISER_CANNOT_PAY,
    NoFill.BELOW_RESERVE: ads_pb2.NO_FILL_REASON_BELOW_RESERVE,
}


class _Replayed(Exception):
    """A concurrent call with the same request_id answered first."""

    def __init__(self, response: ads_pb2.ServeAdResponse) -> None:
        self.response = response


def _ad(impression_id: str, c: Candidate, row: AnyRow, price: auction.Price) -> ads_pb2.Ad:
    return ads_pb2.Ad(
        impression_id=impression_id,
        campaign_id=c.campaign_id,
        business_id=row.business_id,
        creative=ads_pb2.Creative(
            headline=row.headline,
            body=row.body,
            media_uri=row.media_uri,
            call_to_action=row.call_to_action,
        ),
        bid_type=row.bid_type,
        price=money(price.impression_micros, row.currency_code),
        click_price=money(price.click_micros, row.currency_code),
    )


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
    confirmations: Confirmations

    async def serve(self, request: ads_pb2.ServeAdRequest) -> ads_pb2.ServeAdResponse:
        now = self.clock.now()
        limit = self.settings.candidate_limit  # how many matching campaigns one serve may judge

        async def read(at_most: float | None, size: int) -> Page:
            return await self._page(request, now, at_most, size)

        async with self.db.connect() as conn:
            stored = await self.idem.lookup(conn, METHOD, request, ads_pb2.ServeAdResponse)
        if stored is not None:
            return stored
        first = await self._page(request, now, None, first_page_limit(limit))

        async def ask_audience() -> Audience:
            # Asked only when a campaign reached targets interests (consent is a remote call).
            prefs = await self.consent.ad_preferences(request.person_id)
            return eligibility.audience(
                prefs.personalised, prefs.interests, list(request.context.interests)
            )

        bidders = Shortlist(
            first,
            read,
            ask_audience,
            limit=limit,
            reserve_micros=self.settings.reserve_micros,
            seed=f"{request.person_id}|{request.request_id}",
            now=now,
            draw=self.rng.random,
        )
        try:
            position = 0
            reason: NoFill | None = None
            current = await bidders.bidder(0)
            while current is not None:
                after = await bidders.bidder(position + 1)
                pair = [current.ranked] + ([after.ranked] if after is not None else [])
                price = auction.price(pair, 0, self.settings.reserve_micros)
                outcome = await self._try(request, current.candidate, price)
                if isinstance(outcome, ads_pb2.ServeAdResponse):
                    return outcome
                reason = outcome
                position += 1
                current = after
            if reason is None:
                reason = await bidders.no_fill_reason()
            return await self._no_fill(request, reason)
        except _Replayed as replay:
            return replay.response

    async def _page(
        self,
        request: ads_pb2.ServeAdRequest,
        now: datetime,
        at_most: float | None,
        limit: int,
    ) -> Page:
        """Matching campaigns (see store.candidates) and the person's recent impressions of
        the frequency-capped ones among them: one statement each, the second only when a
        campaign is capped. They need not agree: a capped serve counts again, under the
        person's lock, before it reserves (_try)."""
        async with self.db.connect() as conn:
            rows = await store.candidates(
                conn, request.context.country, request.context.language, now, limit, at_most
            )
        cands = [(candidate(r[:-1]), float(r[-1])) for r in rows]
        capped = [c for c, _ in cands if c.cap_max_impressions > 0]
        recent: dict[str, list[datetime]] = {}
        if capped:
            longest = max(c.cap_period_days for c in capped)
            # An IN list of campaign ids: a SQLAlchemy statement, in a read of its own.
            async with self.db.read() as session:
                recent = await store.recent_impressions(
                    session,
                    request.person_id,
                    [c.campaign_id for c in capped],
                    now - timedelta(days=longest),
                )
        return Page(cands, recent)

    async def _replay(self, request: ads_pb2.ServeAdRequest) -> _Replayed:
        async with self.db.read() as session:
            stored = await self.idem.lookup(session, METHOD, request, ads_pb2.ServeAdResponse)
        if stored is None:
            raise Aborted("CONCURRENT_REQUEST", "a call with this request_id is in progress; retry")
        return _Replayed(stored)

    async def _no_fill(
        self, request: ads_pb2.ServeAdRequest, reason: NoFill
    ) -> ads_pb2.ServeAdResponse:
        response = ads_pb2.ServeAdResponse(no_fill=ads_pb2.NoFill(reason=NO_FILL_REASONS[reason]))
        try:
            await self.db.write_batched(
                lambda conn: self.idem.save(conn, METHOD, request, response, later=True)
            )
        except IntegrityError:
            raise await self._replay(request) from None
        return response

    async def _try(
        self, request: ads_pb2.ServeAdRequest, c: Candidate, price: auction.Price
    ) -> ads_pb2.ServeAdResponse | NoFill:
        """Serve campaign `c` at `price`, or say why it could not be served after all."""
        now = self.clock.now()
        today = pacing.day_key(now)
        impression_id = new_id()
        owed = price.impression_micros > 0

        async def work(conn: AsyncConnection) -> tuple[ads_pb2.ServeAdResponse, AnyRow] | NoFill:
            # In a group commit with other serves (Database.write_batched): run again alone
            # if the batch fails, so it keeps nothing between runs.
            if c.cap_max_impressions > 0:
                # Re-count under the person's lock: concurrent serves cannot both pass.
                await store.lock_person(conn, request.person_id)
                seen = await store.count_recent(
                    conn, request.person_id, c.campaign_id, now - timedelta(days=c.cap_period_days)
                )
                if seen >= c.cap_max_impressions:
                    return NoFill.FREQUENCY_CAPPED
            row = await store.reserve_impression(
                conn,
                c.campaign_id,
                amount=price.impression_micros,
                room=max(price.impression_micros, price.click_micros),
                today=today,
            )
            if row is None:
                return NoFill.BUDGET_EXHAUSTED
            await store.add_impression(
                conn,
                {
                    "id": impression_id,
                    "campaign_id": c.campaign_id,
                    "account_id": row.account_id,
                    "person_id": request.person_id,
                    "business_id": row.business_id,
                    "placement": int(request.placement),
                    "serve_time": now,
                    "day": today,
                    "price_micros": price.impression_micros,
                    "click_price_micros": price.click_micros,
                    "currency_code": row.currency_code,
                    "state": PENDING if owed else CHARGED,
                },
                # A capped campaign's impression is counted by the next serve of the batch.
                later=c.cap_max_impressions == 0,
            )
            await store.add_stats(
                conn,
                c.campaign_id,
                today,
                impressions=1,
                spend=price.impression_micros,
                later=True,
            )
            response = ads_pb2.ServeAdResponse(ad=_ad(impression_id, c, row, price))
            # Stored with the reservation, so a retry (also after a crash, or after billing
            # did not answer) gets this very ad and its one pending charge.
            await self.idem.save(conn, METHOD, request, response, later=True)
            return response, row

        try:
            outcome = await self.db.write_batched(work)
        except IntegrityError:
            # A concurrent call with this request_id committed first: nothing of ours stands.
            raise await self._replay(request) from None
        if isinstance(outcome, NoFill):
            return outcome
        response, row = outcome
        if not owed:
            return response

        charge = await self.billing.charge(
            impression_id,
            c.campaign_id,
            row.account_id,
            False,
            price.impression_micros,
            row.currency_code,
        )
        if charge is Charge.POSTED:
            self.confirmations.posted(impression_id)
            return response
        if charge is Charge.UNKNOWN:
            log.warning("serving %s with its charge pending until billing answers", impression_id)
            return response
        await refund_impression(
            self.db,
            impression_id,
            c.campaign_id,
            price.impression_micros,
            today,
            unfunded_until=now + timedelta(seconds=self.settings.unfunded_backoff_seconds),
            forget=(str(current_principal()), request.request_id),
        )
        return NoFill.ADVERTISER_CANNOT_PAY


async def refund_impression(
    db: Database,
    impression_id: str,
    campaign_id: str,
    micros: int,
    day: str,
    *,
    unfunded_until: datetime | None = None,
    forget: tuple[str, str] | None = None,
) -> None:
    """Billing refused an impression: give its budget back, stop counting it, skip the
    campaign until `unfunded_until`, and drop the response stored for its serve (`forget`
    = (principal, request_id)) so that the serve's answer can change."""
    async with db.write() as session:
        # Only the one that moves it out of PENDING gives the budget back.
        if await store.settle_impression(session, impression_id, FAILED):
            await store.release(session, campaign_id, amount=micros, day=day, impressions=1)
            await store.add_stats(
                await session.connection(), campaign_id, day, impressions=-1, spend=-micros
            )
        if unfunded_until is not None:
            await store.set_unfunded(session, campaign_id, unfunded_until)
        if forget is not None:
            await idempotency.forget(session, IDEMPOTENCY, forget[0], METHOD, forget[1])
