"""Bad input is refused with field violations and changes nothing; revocations are never late."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import grpc
import pytest

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
]


@pytest.mark.parametrize(("request_", "field"), BAD_GRANTS)
def test_bad_grant_is_invalid_and_changes_nothing(
    consent: Consent, request_: pb.GrantConsentRequest, field: str
) -> None:
    code, details = rpc_error(consent.call, "GrantConsent", request_, "user:alice")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(details) == "INVALID_ARGUMENT"
    assert field in fields_of(details)
    listed = consent.call("ListConsents", pb.ListConsentsRequest(person_id="alice"), "user:alice")
    assert not listed.consents


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
    ]
    for method, req, principal, field in cases:
        code, details = rpc_error(consent.call, method, req, principal)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, method
        assert field in fields_of(details), (method, fields_of(details))
    # Nothing was recorded: no window opened, no preference stored.
    assert consent.check("alice", "acme", c.CATEGORY_SERVICE).window.kind == c.WINDOW_KIND_NONE
    prefs = consent.call(
        "GetAdPreferences", pb.GetAdPreferencesRequest(person_id="alice"), "user:alice"
    ).preferences
    assert not prefs.HasField("update_time")


def test_no_check_that_starts_after_a_revocation_returned_says_allowed(consent: Consent) -> None:
    consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def checker() -> None:
        while not stop.is_set():
            started = time.monotonic()
            allowed = consent.check("alice", "acme", c.CATEGORY_MARKETING).allowed
            with lock:
                results.append((started, allowed))

    threads = [threading.Thread(target=checker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    revoke = pb.RevokeConsentRequest(
        request_id=rid(), person_id="alice", business_id="acme", all_categories=True
    )
    consent.call("RevokeConsent", revoke, "user:alice")
    returned = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    before = [a for s, a in results if s < returned]
    after = [a for s, a in results if s > returned]
    assert any(before), "the checks ran before the revocation"
    assert after, "the checks ran after the revocation"
    assert not any(after)
