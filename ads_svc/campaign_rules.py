"""What a valid campaign is, and how a field-mask update applies to one."""

from __future__ import annotations

import re

from google.protobuf import field_mask_pb2

from ads_svc.auction import MILLE, BidKind, max_event_micros
from bizmsg.ads.v1 import ads_pb2
from bizmsg.kit.timeutil import from_timestamp
from bizmsg.kit.validation import Validator, check_enum, check_id, check_text

COUNTRY = re.compile(r"^[A-Z]{2}$")
LANGUAGE = re.compile(r"^[a-z]{2}$")
INTEREST = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_COUNTRIES = 250
MAX_LANGUAGES = 50
MAX_INTERESTS = 50
MAX_BID_MICROS = 1_000_000_000_000  # a million currency units: far above any real bid
MAX_CAP_IMPRESSIONS = 1000
MAX_CAP_DAYS = 90

# Paths UpdateCampaign may change (a nested path such as "targeting.countries" counts
# under its top-level field).
UPDATABLE = frozenset(
    {
        "display_name",
        "business_id",
        "creative",
        "targeting",
        "bid_type",
        "bid",
        "daily_budget",
        "lifetime_budget",
        "start_time",
        "end_time",
        "frequency_cap",
    }
)


def bid_kind(bid_type: int) -> BidKind:
    return BidKind.CPM if bid_type == ads_pb2.BID_TYPE_CPM else BidKind.CPC


def _check_list(
    v: Validator, field: str, values: list[str], pattern: re.Pattern[str], limit: int, what: str
) -> None:
    v.check(len(values) <= limit, field, f"at most {limit} entries")
    v.check(len(set(values)) == len(values), field, "must not repeat entries")
    for i, value in enumerate(values):
        v.check(bool(pattern.match(value)), f"{field}[{i}]", f"must be {what}")


def check_interests(v: Validator, field: str, values: list[str]) -> None:
    _check_list(v, field, values, INTEREST, MAX_INTERESTS, "a lower-case keyword (a-z, 0-9, _ -)")


def validate_campaign(
    v: Validator, c: ads_pb2.Campaign, *, currency: str, spent_micros: int = 0
) -> None:
    """Every rule of a whole campaign; violations name fields under "campaign."."""
    p = "campaign."
    check_id(v, p + "advertiser_id", c.advertiser_id)
    check_id(v, p + "account_id", c.account_id)
    check_id(v, p + "business_id", c.business_id)
    check_text(v, p + "display_name", c.display_name, max_len=200)

    if v.check(c.HasField("creative"), p + "creative", "is required"):
        check_text(v, p + "creative.headline", c.creative.headline, required=True, max_len=60)
        check_text(v, p + "creative.body", c.creative.body, max_len=500)
        if c.creative.media_uri:
            v.check(
                c.creative.media_uri.startswith("https://") and len(c.creative.media_uri) <= 2048,
                p + "creative.media_uri",
                "must be an https link of at most 2048 characters",
            )
        check_enum(
            v, p + "creative.call_to_action", c.creative.call_to_action, ads_pb2.CallToAction
        )

    t = c.targeting
    v.check(len(t.countries) > 0, p + "targeting.countries", "at least one country is required")
    _check_list(
        v, p + "targeting.countries", list(t.countries), COUNTRY, MAX_COUNTRIES,
        "an ISO 3166-1 alpha-2 code in upper case",
    )  # fmt: skip
    _check_list(
        v, p + "targeting.languages", list(t.languages), LANGUAGE, MAX_LANGUAGES,
        "an ISO 639-1 code in lower case",
    )  # fmt: skip
    check_interests(v, p + "targeting.interests", list(t.interests))

    check_enum(v, p + "bid_type", c.bid_type, ads_pb2.BidType)
    bid = c.bid.amount_micros
    money_ok = True
    for name in ("bid", "daily_budget", "lifetime_budget"):
        money = getattr(c, name)
        money_ok &= v.check(
            money.currency_code == currency,
            f"{p}{name}.currency_code",
            f"must be {currency}, the currency of the auction",
        )
    if v.check(0 < bid <= MAX_BID_MICROS, p + "bid.amount_micros", "must be positive"):
        if c.bid_type == ads_pb2.BID_TYPE_CPM:
            v.check(
                bid % MILLE == 0,
                p + "bid.amount_micros",
                "a CPM bid must be a multiple of 1000 micros (a whole micro per impression)",
            )
        if c.bid_type in (ads_pb2.BID_TYPE_CPM, ads_pb2.BID_TYPE_CPC) and money_ok:
            event = max(1, max_event_micros(bid_kind(c.bid_type), bid))
            for name in ("daily_budget", "lifetime_budget"):
                v.check(
                    getattr(c, name).amount_micros >= event,
                    f"{p}{name}.amount_micros",
                    f"must be at least one event's price ({event} micros)",
                )
    v.check(
        c.lifetime_budget.amount_micros >= spent_micros,
        p + "lifetime_budget.amount_micros",
        f"must be at least what was already spent ({spent_micros} micros)",
    )

    start = from_timestamp(c.start_time)
    end = from_timestamp(c.end_time)
    v.check(start is not None, p + "start_time", "is required")
    if start is not None and end is not None:
        v.check(end > start, p + "end_time", "must be after start_time")

    cap = c.frequency_cap
    if v.check(
        0 <= cap.max_impressions <= MAX_CAP_IMPRESSIONS,
        p + "frequency_cap.max_impressions",
        f"must be between 0 and {MAX_CAP_IMPRESSIONS}",
    ):
        if cap.max_impressions > 0:
            v.check(
                1 <= cap.period_days <= MAX_CAP_DAYS,
                p + "frequency_cap.period_days",
                f"must be between 1 and {MAX_CAP_DAYS}",
            )
        else:
            v.check(cap.period_days == 0, p + "frequency_cap.period_days", "needs max_impressions")


def apply_update(
    v: Validator,
    current: ads_pb2.Campaign,
    patch: ads_pb2.Campaign,
    mask: field_mask_pb2.FieldMask,
) -> ads_pb2.Campaign:
    """`current` with the masked fields of `patch`; repeated and message fields are replaced."""
    if not v.check(len(mask.paths) > 0, "update_mask", "name at least one field"):
        return current
    for i, path in enumerate(mask.paths):
        top = path.split(".", 1)[0]
        if not v.check(top in UPDATABLE, f"update_mask.paths[{i}]", f"{path!r} cannot be changed"):
            continue
        single = field_mask_pb2.FieldMask(paths=[path])
        v.check(
            single.IsValidForDescriptor(ads_pb2.Campaign.DESCRIPTOR),
            f"update_mask.paths[{i}]",
            f"{path!r} is not a field of Campaign",
        )
    if v.violations:
        return current
    merged = ads_pb2.Campaign()
    merged.CopyFrom(current)
    mask.MergeMessage(patch, merged, replace_message_field=True, replace_repeated_field=True)
    return merged
