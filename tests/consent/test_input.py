"""Bad input is refused with field violations and changes nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.timeutil import to_timestamp
from tests.consent.conftest import Consent, fields_of, reason_of, rid, rpc_error

NOTICE = pb.Notice(text="offers", locale="en-GB")


def grant(**kw: Any) -> pb.GrantConsentRequest:
    base: dict[str, Any] = {
        "request_id": rid(),
        "person_id": "alice",
        "business_id": "acme",
        "categories": [c.CATEGORY_MARKETING],
        "collection_method": pb.COLLECTION_METHOD_WEB_FORM,
        "notice": NOTICE,
    }
    base.update(kw)
    return pb.GrantConsentRequest(**base)


BAD_GRANTS = [
    (grant(categories=[]), "categories"),
    (grant(categories=[c.CATEGORY_SERVICE]), "categories[0]"),
    (grant(categories=[99]), "categories[0]"),
    (grant(request_id=""), "request_id"),
    (grant(business_id=""), "business_id"),
    (grant(business_id="x" * 129), "business_id"),
    (grant(person_id="al ice"), "person_id"),
    (grant(collection_method=0), "collection_method"),
    (grant(collection_method=42), "collection_method"),
    (grant(notice=pb.Notice(locale="en-GB")), "notice"),
    (grant(notice=pb.Notice(text="t" * 10_001, locale="en-GB")), "notice.text"),
    (grant(notice=pb.Notice(text="offers", locale="not a locale")), "notice.locale"),
    (grant(notice=pb.Notice(text="offers")), "notice.locale"),
    (grant(notice=pb.Notice(notice_id="n1", locale="en")), "notice.notice_version"),
    (grant(notice=pb.Notice(text="o", locale="en", policy_url="ftp://x")), "notice.policy_url"),
    (grant(person_id="p" * 129), "person_id"),
    (grant(person_id=""), "person_id"),
    (grant(collection_reference="r" * 257), "collection_reference"),
    (grant(all_categories=True), "categories"),  # both all_categories and a list
]


def test_bad_grants_are_invalid_and_change_nothing(consent: Consent) -> None:
    # One service for all cases (a service start per case would dominate the run time).
    for request_, field in BAD_GRANTS:
        code, details = rpc_error(consent.call, "GrantConsent", request_, "user:alice")
        assert code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert reason_of(details) == "INVALID_ARGUMENT"
        assert field in fields_of(details), (field, fields_of(details))
    listed = consent.call("ListConsents", pb.ListConsentsRequest(person_id="alice"), "user:alice")
    assert not listed.consents
    code, _ = rpc_error(
        consent.call,
        "GetConsentHistory",
        pb.GetConsentHistoryRequest(person_id="alice"),
        "user:alice",
    )
    assert code == grpc.StatusCode.NOT_FOUND  # not even a person record was made


def test_times_in_the_wrong_direction_are_invalid(consent: Consent) -> None:
    past = to_timestamp(consent.clock.now() - timedelta(seconds=1))
    future = to_timestamp(consent.clock.now() + timedelta(hours=1))
    for req, field in (
        (grant(expire_time=past), "expire_time"),
        (grant(collection_time=future), "collection_time"),
    ):
        code, details = rpc_error(consent.call, "GrantConsent", req, "user:alice")
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in fields_of(details)
    assert consent.check("alice", "acme", c.CATEGORY_MARKETING).reason == (
        pb.CONSENT_DECISION_REASON_NO_CONSENT
    )


def test_other_bad_input(consent: Consent) -> None:
    cases = [
        (
            "CheckConsent",
            pb.CheckConsentRequest(business_id="acme", person_id="alice"),
            "service:delivery",
            "category",
        ),
        (
            "CheckConsent",
            pb.CheckConsentRequest(business_id="acme", person_id="alice", category=17),
            "service:delivery",
            "category",
        ),
        (
            "CheckConsent",
            pb.CheckConsentRequest(person_id="alice", category=1),
            "service:delivery",
            "business_id",
        ),
        (
            "RecordUserMessage",
            pb.RecordUserMessageRequest(
                request_id=rid(),
                person_id="alice",
                business_id="acme",
                referral=c.Referral(campaign_id="x"),
            ),
            "service:delivery",
            "referral.click_id",
        ),
        (
            "RevokeConsent",
            pb.RevokeConsentRequest(request_id=rid(), person_id="alice", business_id="acme"),
            "user:alice",
            "categories",
        ),
        (
            "ListConsents",
            pb.ListConsentsRequest(person_id="alice", page_size=-1),
            "user:alice",
            "page_size",
        ),
        (
            "ListConsents",
            pb.ListConsentsRequest(person_id="alice", page_token="%%%"),
            "user:alice",
            "page_token",
        ),
        (
            "SetAdPreferences",
            pb.SetAdPreferencesRequest(
                request_id=rid(),
                preferences=pb.AdPreferences(person_id="alice"),
                update_mask={"paths": ["colour"]},
            ),
            "user:alice",
            "update_mask.paths",
        ),
        ("VerifyConsentHistory", pb.VerifyConsentHistoryRequest(), "admin", "person_id"),
        (
            "VerifyConsentHistory",
            pb.VerifyConsentHistoryRequest(person_id="alice", history_id="h"),
            "admin",
            "person_id",
        ),
        (
            "RecordUserMessage",
            pb.RecordUserMessageRequest(
                request_id=rid(),
                person_id="alice",
                business_id="acme",
                referral=c.Referral(click_id="k" * 129),
            ),
            "service:delivery",
            "referral.click_id",
        ),
        (
            "RecordBusinessReply",
            pb.RecordBusinessReplyRequest(request_id="", person_id="alice", business_id="acme"),
            "service:delivery",
            "request_id",
        ),
        (
            "BlockBusiness",
            pb.BlockBusinessRequest(request_id=rid(), person_id="alice", business_id="a b"),
            "user:alice",
            "business_id",
        ),
        (
            "SetAdPreferences",
            pb.SetAdPreferencesRequest(
                request_id=rid(),
                preferences=pb.AdPreferences(person_id="alice", interests=["i"] * 51),
            ),
            "user:alice",
            "preferences.interests",
        ),
        (
            "GetConsentHistory",
            pb.GetConsentHistoryRequest(person_id="alice", page_token="bm90LWpzb24"),
            "user:alice",
            "page_token",
        ),
        ("ErasePerson", pb.ErasePersonRequest(request_id=rid()), "admin", "person_id"),
    ]
    for method, req, principal, field in cases:
        code, details = rpc_error(consent.call, method, req, principal)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, method
        assert field in fields_of(details), (method, fields_of(details))
    # Nothing was recorded: no window opened, no block, no preference stored.
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert (
        d.window.kind == c.WINDOW_KIND_NONE
        and d.reason == pb.CONSENT_DECISION_REASON_NO_OPEN_WINDOW
    )
    prefs = consent.call(
        "GetAdPreferences", pb.GetAdPreferencesRequest(person_id="alice"), "user:alice"
    ).preferences
    assert not prefs.HasField("update_time")
