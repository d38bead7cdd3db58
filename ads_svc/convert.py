"""Conversions between campaign rows, auction candidates and the wire messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ads_svc.campaign_rules import bid_kind
from ads_svc.eligibility import Candidate
from ads_svc.models import CampaignRow
from bizmsg.ads.v1 import ads_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.timeutil import from_timestamp, to_timestamp


def money(micros: int, currency: str) -> common_pb2.Money:
    return common_pb2.Money(amount_micros=micros, currency_code=currency)


def campaign_to_proto(r: CampaignRow) -> ads_pb2.Campaign:
    c = ads_pb2.Campaign(
        campaign_id=r.id,
        advertiser_id=r.advertiser_id,
        account_id=r.account_id,
        business_id=r.business_id,
        display_name=r.display_name,
        creative=ads_pb2.Creative(
            headline=r.headline,
            body=r.body,
            media_uri=r.media_uri,
            call_to_action=r.call_to_action,  # type: ignore[arg-type]
        ),
        targeting=ads_pb2.Targeting(
            countries=json.loads(r.countries),
            languages=json.loads(r.languages),
            interests=json.loads(r.interests),
        ),
        bid_type=r.bid_type,  # type: ignore[arg-type]
        bid=money(r.bid_micros, r.currency_code),
        daily_budget=money(r.daily_budget_micros, r.currency_code),
        lifetime_budget=money(r.lifetime_budget_micros, r.currency_code),
        start_time=to_timestamp(r.start_time),
        frequency_cap=ads_pb2.FrequencyCap(
            max_impressions=r.cap_max_impressions, period_days=r.cap_period_days
        ),
        status=r.status,  # type: ignore[arg-type]
        spend=money(r.spend_micros, r.currency_code),
        create_time=to_timestamp(r.create_time),
        update_time=to_timestamp(r.update_time),
    )
    if r.end_time is not None:
        c.end_time.CopyFrom(to_timestamp(r.end_time))
    return c


def campaign_values(c: ads_pb2.Campaign) -> dict[str, Any]:
    """The row columns a (validated) campaign message sets."""
    start = from_timestamp(c.start_time)
    assert start is not None  # validated: start_time is required
    end: datetime | None = from_timestamp(c.end_time)
    return {
        "advertiser_id": c.advertiser_id,
        "account_id": c.account_id,
        "business_id": c.business_id,
        "display_name": c.display_name,
        "headline": c.creative.headline,
        "body": c.creative.body,
        "media_uri": c.creative.media_uri,
        "call_to_action": int(c.creative.call_to_action),
        "countries": json.dumps(list(c.targeting.countries)),
        "languages": json.dumps(list(c.targeting.languages)),
        "interests": json.dumps(list(c.targeting.interests)),
        "bid_type": int(c.bid_type),
        "bid_micros": c.bid.amount_micros,
        "currency_code": c.bid.currency_code,
        "daily_budget_micros": c.daily_budget.amount_micros,
        "lifetime_budget_micros": c.lifetime_budget.amount_micros,
        "start_time": start,
        "end_time": end,
        "cap_max_impressions": c.frequency_cap.max_impressions,
        "cap_period_days": c.frequency_cap.period_days,
    }


def candidate(r: Sequence[Any]) -> Candidate:
    """A candidate from the store.CANDIDATE_COLUMNS of a row (same field order as Candidate)."""
    campaign_id, bid_type, bid_micros, interests, *rest = r
    return Candidate(
        campaign_id,
        bid_kind(bid_type),
        bid_micros,
        # Most campaigns target no interests: skip parsing their empty list.
        frozenset(json.loads(interests)) if interests != "[]" else frozenset(),
        *rest,
    )
