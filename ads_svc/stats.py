"""Per-day campaign statistics."""

from __future__ import annotations

from datetime import datetime

from ads_svc.convert import money
from ads_svc.models import DailyStatsRow
from bizmsg.ads.v1 import ads_pb2
from bizmsg.kit.timeutil import to_timestamp

MAX_DAYS = 366


def _fill(
    out: ads_pb2.DailyStats, impressions: int, clicks: int, spend: int, currency: str
) -> ads_pb2.DailyStats:
    out.impressions = impressions
    out.clicks = clicks
    out.spend.CopyFrom(money(spend, currency))
    # A rate, not money: a float is the right type here.
    out.click_through_rate = clicks / impressions if impressions > 0 else 0.0
    return out


def report(rows: list[DailyStatsRow], currency: str) -> ads_pb2.GetCampaignStatsResponse:
    resp = ads_pb2.GetCampaignStatsResponse()
    for r in rows:
        day = ads_pb2.DailyStats(
            day_start_time=to_timestamp(datetime.fromisoformat(r.day + "T00:00:00+00:00"))
        )
        resp.days.append(_fill(day, r.impressions, r.clicks, r.spend_micros, currency))
    _fill(
        resp.total,
        sum(r.impressions for r in rows),
        sum(r.clicks for r in rows),
        sum(r.spend_micros for r in rows),
        currency,
    )
    return resp
