"""Input checks of every consent RPC: each collects all field violations, then raises one
INVALID_ARGUMENT, before anything is read or written."""

from __future__ import annotations

from datetime import datetime

from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.timeutil import from_timestamp
from bizmsg.kit.validation import Validator, check_enum, check_id, check_request_id, check_text
from consent_svc.categories import OPT_IN_CATEGORIES

MAX_NOTICE_TEXT = 10_000
MAX_INTERESTS = 50
AD_PREFERENCE_PATHS = {"personalization_enabled", "interests"}


def _locale(v: Validator, field: str, value: str) -> None:
    if not value:
        v.add(field, "is required")
        return
    parts = value.split("-")
    v.check(
        len(value) <= 35
        and all(p.isascii() and p.isalnum() and 1 <= len(p) <= 8 for p in parts)
        and 2 <= len(parts[0]) <= 3,
        field,
        "must be a BCP 47 language tag such as en-GB",
    )


def _categories(v: Validator, values: list[int], all_categories: bool) -> None:
    if all_categories:
        v.check(not values, "categories", "must be empty when all_categories is set")
        return
    if not values:
        v.add("categories", "name at least one category, or set all_categories")
    for i, c in enumerate(values):
        check_enum(v, f"categories[{i}]", c, common_pb2.Category, allowed=OPT_IN_CATEGORIES)


def person_and_business(v: Validator, person_id: str, business_id: str) -> None:
    check_id(v, "person_id", person_id)
    check_id(v, "business_id", business_id)


def grant(req: pb.GrantConsentRequest, now: datetime) -> None:
    v = Validator()
    check_request_id(v, req.request_id)
    person_and_business(v, req.person_id, req.business_id)
    _categories(v, list(req.categories), req.all_categories)
    check_enum(v, "collection_method", req.collection_method, pb.CollectionMethod)
    n = req.notice
    check_text(v, "notice.text", n.text, max_len=MAX_NOTICE_TEXT)
    check_id(v, "notice.notice_id", n.notice_id, required=False)
    check_id(v, "notice.notice_version", n.notice_version, required=False, max_len=64)
    if n.notice_id or n.notice_version:
        v.check(
            bool(n.notice_id and n.notice_version),
            "notice.notice_version",
            "notice_id and notice_version go together",
        )
    elif not n.text:
        v.add("notice", "give the notice text, or its notice_id and notice_version")
    _locale(v, "notice.locale", n.locale)
    check_text(v, "notice.policy_url", n.policy_url, max_len=2048)
    if n.policy_url:
        v.check(
            n.policy_url.startswith(("https://", "http://")),
            "notice.policy_url",
            "must be an http(s) URL",
        )
    check_text(v, "collection_reference", req.collection_reference, max_len=256)
    if req.HasField("collection_time"):
        t = from_timestamp(req.collection_time)
        v.check(t is not None and t <= now, "collection_time", "must not be in the future")
    if req.HasField("expire_time"):
        t = from_timestamp(req.expire_time)
        v.check(t is not None and t > now, "expire_time", "must be in the future")
    v.raise_if_any()


def revoke(req: pb.RevokeConsentRequest) -> None:
    v = Validator()
    check_request_id(v, req.request_id)
    person_and_business(v, req.person_id, req.business_id)
    _categories(v, list(req.categories), req.all_categories)
    v.raise_if_any()


def person_business_request(request_id: str, person_id: str, business_id: str) -> None:
    v = Validator()
    check_request_id(v, request_id)
    person_and_business(v, person_id, business_id)
    v.raise_if_any()


def check(req: pb.CheckConsentRequest) -> None:
    v = Validator()
    person_and_business(v, req.person_id, req.business_id)
    check_enum(v, "category", req.category, common_pb2.Category)
    v.raise_if_any()


def user_message(req: pb.RecordUserMessageRequest) -> None:
    v = Validator()
    check_request_id(v, req.request_id)
    person_and_business(v, req.person_id, req.business_id)
    if req.HasField("referral"):
        check_id(v, "referral.click_id", req.referral.click_id)
        check_id(v, "referral.campaign_id", req.referral.campaign_id, required=False)
    v.raise_if_any()


def person_only(person_id: str) -> None:
    v = Validator()
    check_id(v, "person_id", person_id)
    v.raise_if_any()


def erase(req: pb.ErasePersonRequest) -> None:
    v = Validator()
    check_request_id(v, req.request_id)
    check_id(v, "person_id", req.person_id)
    v.raise_if_any()


def verify(req: pb.VerifyConsentHistoryRequest) -> None:
    v = Validator()
    if bool(req.person_id) == bool(req.history_id):
        v.add("person_id", "give exactly one of person_id and history_id")
    check_id(v, "person_id", req.person_id, required=False)
    check_id(v, "history_id", req.history_id, required=False, max_len=36)
    v.raise_if_any()


def ad_preferences(req: pb.SetAdPreferencesRequest) -> set[str]:
    v = Validator()
    check_request_id(v, req.request_id)
    check_id(v, "preferences.person_id", req.preferences.person_id)
    paths = set(req.update_mask.paths) or set(AD_PREFERENCE_PATHS)
    for p in sorted(paths - AD_PREFERENCE_PATHS):
        v.add("update_mask.paths", f"unknown field {p!r}")
    interests = list(req.preferences.interests)
    v.check(
        len(interests) <= MAX_INTERESTS,
        "preferences.interests",
        f"at most {MAX_INTERESTS} interests",
    )
    for i, interest in enumerate(interests):
        check_id(v, f"preferences.interests[{i}]", interest, max_len=64)
    v.raise_if_any()
    return paths
