"""RecordClick: one click per impression, charged for CPC, turned into a chat link."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from ads_svc import pacing, store
from ads_svc.convert import money
from ads_svc.models import CHARGED, PENDING, UNCHARGED, ClickRow
from ads_svc.partners import Billing, Charge
from bizmsg.ads.v1 import ads_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import FailedPrecondition, NotFound, PermissionDenied
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.ids import new_id
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import to_timestamp

METHOD = "RecordClick"


def chat_link(business_id: str, click_id: str) -> str:
    return f"bizmsg://chat/{business_id}?referral={click_id}"


def click_response(c: ClickRow) -> ads_pb2.RecordClickResponse:
    return ads_pb2.RecordClickResponse(
        click_id=c.id,
        chat_link=chat_link(c.business_id, c.id),
        referral=common_pb2.Referral(click_id=c.id, campaign_id=c.campaign_id),
        business_id=c.business_id,
        price=money(c.price_micros, c.currency_code),
    )


def click_to_proto(c: ClickRow) -> ads_pb2.Click:
    return ads_pb2.Click(
        click_id=c.id,
        impression_id=c.impression_id,
        campaign_id=c.campaign_id,
        business_id=c.business_id,
        person_id=c.person_id,
        create_time=to_timestamp(c.create_time),
    )


@dataclass
class Clicks:
    db: Database
    clock: Clock
    idem: Idempotency
    billing: Billing
    # After billing refused a click's charge, the campaign is skipped for this long.
    unfunded_backoff_seconds: float

    async def record(
        self, who: Principal, request: ads_pb2.RecordClickRequest
    ) -> ads_pb2.RecordClickResponse:
        async with self.db.read() as session:
            stored = await self.idem.lookup(session, METHOD, request, ads_pb2.RecordClickResponse)
        if stored is not None:
            return stored
        for _ in range(2):
            try:
                click, fresh = await self._insert(who, request.impression_id)
                break
            except IntegrityError:
                # A concurrent click on the same impression won; the loop returns that one.
                continue
        else:
            raise FailedPrecondition("CLICK_CONFLICT", "the impression is being clicked; retry")
        if fresh and click.state == PENDING:
            charge = await settle_click(self.db, self.billing, click, self._backoff())
            if charge is Charge.REFUSED:
                click.price_micros = 0  # as settle_click stored it: the click is free
        response = click_response(click)
        try:
            async with self.db.write() as session:
                await self.idem.save(session, METHOD, request, response)
        except IntegrityError:
            pass  # a concurrent retry with this request_id stored the same click
        return response

    def _backoff(self) -> datetime:
        return self.clock.now() + timedelta(seconds=self.unfunded_backoff_seconds)

    async def _insert(self, who: Principal, impression_id: str) -> tuple[ClickRow, bool]:
        """The impression's click, made now (True) or found (False)."""
        now = self.clock.now()
        today = pacing.day_key(now)
        async with self.db.write() as session:
            imp = await store.get_impression(session, impression_id)
            if imp is None:
                raise NotFound(
                    "IMPRESSION_NOT_FOUND",
                    "no such impression",
                    resource_type="bizmsg.ads.v1.Impression",
                    resource_name=impression_id,
                )
            if not (who.is_admin or (who.kind == "user" and who.id == imp.person_id)):
                raise PermissionDenied("NOT_IMPRESSION_VIEWER", "the ad was shown to someone else")
            existing = await store.click_for_impression(session, impression_id)
            if existing is not None:
                return existing, False
            if imp.state not in (CHARGED, PENDING):
                raise FailedPrecondition(
                    "IMPRESSION_NOT_SERVED",
                    "the impression was not served",
                    violations=[("IMPRESSION", impression_id, "its charge was refused")],
                )
            price = imp.click_price_micros
            state = CHARGED
            if price > 0:
                reserved = await store.reserve(
                    session,
                    imp.campaign_id,
                    amount=price,
                    room=price,
                    today=today,
                    clicks=1,
                )
                state = PENDING if reserved else UNCHARGED
                if not reserved:
                    # No budget room left: the click still opens the chat, free of charge.
                    price = 0
                    await store.count_click(session, imp.campaign_id)
            else:
                await store.count_click(session, imp.campaign_id)
            click = ClickRow(
                id=new_id(),
                impression_id=impression_id,
                campaign_id=imp.campaign_id,
                account_id=imp.account_id,
                person_id=imp.person_id,
                business_id=imp.business_id,
                day=today,
                price_micros=price,
                currency_code=imp.currency_code,
                state=state,
                create_time=now,
            )
            session.add(click)
            await session.flush()
            await store.add_stats(
                await session.connection(), imp.campaign_id, today, clicks=1, spend=price
            )
            return click, True

    async def get(self, who: Principal, click_id: str) -> ads_pb2.Click:
        async with self.db.read() as session:
            click = await store.get_click(session, click_id)
        if click is None:
            raise NotFound(
                "CLICK_NOT_FOUND",
                "no such click",
                resource_type="bizmsg.ads.v1.Click",
                resource_name=click_id,
            )
        allowed = (
            who.is_admin
            or who.is_service("consent")
            or who.is_service("delivery")
            or (who.kind == "user" and who.id == click.person_id)
        )
        if not allowed:
            raise PermissionDenied("NOT_CLICK_READER", "caller may not read this click")
        return click_to_proto(click)


async def settle_click(
    db: Database, billing: Billing, click: ClickRow, unfunded_until: datetime
) -> Charge:
    """Charge a pending click. A refusal gives the budget back, leaves the click free and
    skips the campaign until `unfunded_until` (its advertiser cannot pay). UNKNOWN leaves
    the click PENDING for the settlement job, which retries with the same request_id."""
    charge = await billing.charge(
        click.id, click.campaign_id, click.account_id, True, click.price_micros, click.currency_code
    )
    if charge is Charge.UNKNOWN:
        return charge
    async with db.write() as session:
        if charge is Charge.POSTED:
            await store.settle_click(session, click.id, CHARGED)
            return charge
        # Only the one that moves it out of PENDING gives the budget back.
        if await store.settle_click(session, click.id, UNCHARGED, price_micros=0):
            await store.release(
                session, click.campaign_id, amount=click.price_micros, day=click.day
            )
            await store.add_stats(
                await session.connection(), click.campaign_id, click.day, spend=-click.price_micros
            )
        await store.set_unfunded(session, click.campaign_id, unfunded_until)
    return charge
