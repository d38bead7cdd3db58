"""The settlement job: finish charges whose outcome billing never told us.

An impression or click is PENDING from its budget reservation until billing answers.
When billing did not answer (down, deadline passed, crash in between), this job asks
again with the same request_id, which billing treats idempotently, until the answer is
final: posted, or refused (then the reservation is given back).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ads_svc import store
from ads_svc.clicks import settle_click
from ads_svc.models import CHARGED
from ads_svc.partners import Billing, Charge
from ads_svc.serving import refund_impression
from bizmsg.kit.clock import Clock
from bizmsg.kit.storage import Database

BATCH = 100


@dataclass
class Settlement:
    db: Database
    clock: Clock
    billing: Billing
    after_seconds: float
    # A refused charge skips its campaign for this long (its advertiser cannot pay).
    unfunded_backoff_seconds: float

    async def run_once(self) -> int:
        """Settle one batch of each kind; returns how many reached a final state."""
        now = self.clock.now()
        before = now - timedelta(seconds=self.after_seconds)
        unfunded_until = now + timedelta(seconds=self.unfunded_backoff_seconds)
        async with self.db.read() as session:
            impressions = await store.pending_impressions(session, before, BATCH)
            clicks = await store.pending_clicks(session, before, BATCH)
        done = 0
        for imp in impressions:
            charge = await self.billing.charge(
                imp.id, imp.campaign_id, imp.account_id, False, imp.price_micros, imp.currency_code
            )
            if charge is Charge.POSTED:
                async with self.db.write() as session:
                    await store.settle_impression(session, imp.id, CHARGED)
                done += 1
            elif charge is Charge.REFUSED:
                await refund_impression(
                    self.db,
                    imp.id,
                    imp.campaign_id,
                    imp.price_micros,
                    imp.day,
                    unfunded_until=unfunded_until,
                )
                done += 1
        for click in clicks:
            charge = await settle_click(self.db, self.billing, click, unfunded_until)
            done += charge is not Charge.UNKNOWN
        return done
