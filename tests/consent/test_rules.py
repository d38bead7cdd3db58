"""Consent and window rules, checked through the RPCs with a moved clock."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import grpc

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.timeutil import from_timestamp, to_timestamp
from tests.consent.conftest import Consent, reason_of, rid, rpc_error

DELIVERY = "service:delivery"


def user_message(
    consent: Consent, person: str, business: str, click: str = ""
) -> pb.RecordUserMessageResponse:
    req = pb.RecordUserMessageRequest(request_id=rid(), person_id=person, business_id=business)
    if click:
        req.referral.CopyFrom(c.Referral(click_id=click, campaign_id="camp-1"))
    return consent.call("RecordUserMessage", req, DELIVERY)


def reply(consent: Consent, person: str, business: str) -> pb.RecordBusinessReplyResponse:
    req = pb.RecordBusinessReplyRequest(request_id=rid(), business_id=business, person_id=person)
    return consent.call("RecordBusinessReply", req, DELIVERY)


def test_opt_in_per_category_and_revocation(consent: Consent) -> None:
    assert consent.check("alice", "acme", c.CATEGORY_MARKETING).reason == (
        pb.CONSENT_DECISION_REASON_NO_CONSENT
    )
    g = consent.grant("alice", "acme", c.CATEGORY_MARKETING, c.CATEGORY_UTILITY)
    assert g.consent.version == 1
    ok = consent.check("alice", "acme", c.CATEGORY_MARKETING)
    assert ok.allowed and ok.reason == pb.CONSENT_DECISION_REASON_ALLOWED
    assert ok.consent_id == g.consent.consent_id and ok.consent_version == 1
    assert ok.window.kind == c.WINDOW_KIND_NONE
    auth = consent.check("alice", "acme", c.CATEGORY_AUTHENTICATION)
    assert not auth.allowed and auth.reason == pb.CONSENT_DECISION_REASON_CATEGORY_NOT_GRANTED
    assert consent.check("alice", "other", c.CATEGORY_MARKETING).reason == (
        pb.CONSENT_DECISION_REASON_NO_CONSENT
    )

    revoke = pb.RevokeConsentRequest(
        request_id=rid(), person_id="alice", business_id="acme", categories=[c.CATEGORY_MARKETING]
    )
    first = consent.call("RevokeConsent", revoke, "user:alice")
    assert list(first.consent.revoked_categories) == [c.CATEGORY_MARKETING]
    assert first.consent.version == 2
    # A retry replays the first answer and has no second effect.
    assert consent.call("RevokeConsent", revoke, "user:alice") == first
    m = consent.check("alice", "acme", c.CATEGORY_MARKETING)
    assert not m.allowed and m.reason == pb.CONSENT_DECISION_REASON_REVOKED
    assert m.consent_version == 2
    assert consent.check("alice", "acme", c.CATEGORY_UTILITY).allowed
    # The same request_id with other parameters is refused.
    other = pb.RevokeConsentRequest(
        request_id=revoke.request_id, person_id="alice", business_id="acme", all_categories=True
    )
    code, details = rpc_error(consent.call, "RevokeConsent", other, "user:alice")
    assert code == grpc.StatusCode.ALREADY_EXISTS and reason_of(details) == "REQUEST_ID_REUSED"
    assert consent.check("alice", "acme", c.CATEGORY_UTILITY).allowed
    # Granting again lifts the revocation.
    consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    assert consent.check("alice", "acme", c.CATEGORY_MARKETING).consent_version == 3


def test_grant_is_idempotent_by_request_id(consent: Consent) -> None:
    req = pb.GrantConsentRequest(
        request_id=rid(),
        person_id="alice",
        business_id="acme",
        all_categories=True,
        collection_method=pb.COLLECTION_METHOD_IN_CHAT,
        notice=pb.Notice(notice_id="offers", notice_version="3", locale="de-DE"),
    )
    first = consent.call("GrantConsent", req, "user:alice")
    assert consent.call("GrantConsent", req, "user:alice") == first
    hist = consent.call(
        "GetConsentHistory", pb.GetConsentHistoryRequest(person_id="alice"), "user:alice"
    )
    assert len(hist.events) == 1
    assert consent.check("alice", "acme", c.CATEGORY_AUTHENTICATION).consent_version == 1


def test_revoking_what_was_never_granted_is_not_found(consent: Consent) -> None:
    req = pb.RevokeConsentRequest(
        request_id=rid(), person_id="alice", business_id="acme", all_categories=True
    )
    code, details = rpc_error(consent.call, "RevokeConsent", req, "user:alice")
    assert code == grpc.StatusCode.NOT_FOUND and reason_of(details) == "CONSENT_NOT_FOUND"


def test_consent_expires(consent: Consent) -> None:
    expire = consent.clock.now() + timedelta(hours=1)
    consent.grant("alice", "acme", c.CATEGORY_MARKETING, expire_time=to_timestamp(expire))
    consent.clock.advance(timedelta(minutes=59))
    assert consent.check("alice", "acme", c.CATEGORY_MARKETING).allowed
    consent.clock.advance(timedelta(minutes=1))
    d = consent.check("alice", "acme", c.CATEGORY_MARKETING)
    assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_EXPIRED


def test_customer_service_window_closes_at_24_hours(consent: Consent) -> None:
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_NO_OPEN_WINDOW
    start = consent.clock.now()
    r = user_message(consent, "alice", "acme")
    assert r.customer_service_window.kind == c.WINDOW_KIND_CUSTOMER_SERVICE
    assert from_timestamp(r.customer_service_window.expire_time) == start + timedelta(hours=24)
    assert not r.free_entry_pending
    consent.clock.advance(timedelta(hours=24) - timedelta(seconds=1))
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert d.allowed and d.window.kind == c.WINDOW_KIND_CUSTOMER_SERVICE
    # Marketing still needs an opt-in, window or not; the window is reported for pricing.
    m = consent.check("alice", "acme", c.CATEGORY_MARKETING)
    assert not m.allowed and m.window.kind == c.WINDOW_KIND_CUSTOMER_SERVICE
    consent.clock.advance(timedelta(seconds=1))
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_NO_OPEN_WINDOW
    assert d.window.kind == c.WINDOW_KIND_NONE
    # A new message reopens it for 24 hours from that message.
    user_message(consent, "alice", "acme")
    consent.clock.advance(timedelta(hours=23))
    assert consent.check("alice", "acme", c.CATEGORY_SERVICE).allowed


def test_free_entry_window_opens_for_an_ad_referral_answered_within_24_hours(
    consent: Consent,
) -> None:
    r = user_message(consent, "alice", "acme", click="click-1")
    assert r.free_entry_pending
    consent.clock.advance(timedelta(hours=23))
    pending = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert pending.allowed and pending.window.kind == c.WINDOW_KIND_FREE_ENTRY
    assert pending.free_entry_pending
    reply_time = consent.clock.now()
    opened = reply(consent, "alice", "acme")
    assert opened.free_entry_opened and opened.window.kind == c.WINDOW_KIND_FREE_ENTRY
    assert from_timestamp(opened.window.expire_time) == reply_time + timedelta(hours=72)
    # Later replies change nothing.
    consent.clock.advance(timedelta(hours=10))
    again = reply(consent, "alice", "acme")
    assert not again.free_entry_opened
    assert from_timestamp(again.window.expire_time) == reply_time + timedelta(hours=72)
    # Open until 72 h after the reply (the 24 h window has long closed), then nothing.
    consent.clock.set(reply_time + timedelta(hours=72) - timedelta(seconds=1))
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert d.allowed and d.window.kind == c.WINDOW_KIND_FREE_ENTRY and not d.free_entry_pending
    consent.clock.advance(timedelta(seconds=1))
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert not d.allowed and d.window.kind == c.WINDOW_KIND_NONE


def test_a_referral_while_free_entry_is_open_arms_nothing(consent: Consent) -> None:
    user_message(consent, "alice", "acme", click="click-1")
    reply_time = consent.clock.now()
    assert reply(consent, "alice", "acme").free_entry_opened
    consent.clock.advance(timedelta(hours=1))
    again = user_message(consent, "alice", "acme", click="click-2")
    assert not again.free_entry_pending
    # The customer-service window still moves with the message.
    assert from_timestamp(again.customer_service_window.expire_time) == (
        consent.clock.now() + timedelta(hours=24)
    )
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert d.window.kind == c.WINDOW_KIND_FREE_ENTRY and not d.free_entry_pending
    assert from_timestamp(d.window.expire_time) == reply_time + timedelta(hours=72)
    assert not reply(consent, "alice", "acme").free_entry_opened
    # Once it has closed, a new ad referral arms a new entry point.
    consent.clock.set(reply_time + timedelta(hours=72))
    later = user_message(consent, "alice", "acme", click="click-3")
    assert later.free_entry_pending
    assert reply(consent, "alice", "acme").free_entry_opened


def test_free_entry_needs_a_reply_within_24_hours(consent: Consent) -> None:
    user_message(consent, "alice", "acme", click="click-1")
    consent.clock.advance(timedelta(hours=24))
    late = reply(consent, "alice", "acme")
    assert not late.free_entry_opened and late.window.kind == c.WINDOW_KIND_NONE
    assert consent.check("alice", "acme", c.CATEGORY_SERVICE).window.kind == c.WINDOW_KIND_NONE


def test_free_entry_needs_an_ad_referral(consent: Consent) -> None:
    user_message(consent, "alice", "acme")
    r = reply(consent, "alice", "acme")
    assert not r.free_entry_opened and r.window.kind == c.WINDOW_KIND_CUSTOMER_SERVICE
    assert consent.check("alice", "acme", c.CATEGORY_UTILITY).window.kind == (
        c.WINDOW_KIND_CUSTOMER_SERVICE
    )


def test_block_stops_everything_windows_included(consent: Consent) -> None:
    consent.grant("alice", "acme")
    user_message(consent, "alice", "acme", click="click-1")
    block = pb.BlockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme")
    consent.call("BlockBusiness", block, "user:alice")
    for cat in (c.CATEGORY_MARKETING, c.CATEGORY_UTILITY, c.CATEGORY_SERVICE):
        d = consent.check("alice", "acme", cat)
        assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_BLOCKED
        assert d.window.kind == c.WINDOW_KIND_NONE
    unblock = pb.UnblockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme")
    assert consent.call("UnblockBusiness", unblock, "user:alice").was_blocked
    assert consent.check("alice", "acme", c.CATEGORY_MARKETING).allowed
    assert consent.check("alice", "acme", c.CATEGORY_SERVICE).allowed


def test_ad_preferences_are_off_until_the_person_turns_them_on(consent: Consent) -> None:
    get = pb.GetAdPreferencesRequest(person_id="alice")
    prefs = consent.call("GetAdPreferences", get, "service:ads").preferences
    assert not prefs.personalization_enabled
    set_ = pb.SetAdPreferencesRequest(
        request_id=rid(),
        preferences=pb.AdPreferences(person_id="alice", interests=["cycling", "jazz"]),
        update_mask={"paths": ["interests"]},
    )
    consent.call("SetAdPreferences", set_, "user:alice")
    # Interests are kept but withheld from ads while personalisation is off.
    assert not consent.call("GetAdPreferences", get, "service:ads").preferences.interests
    mine = consent.call("GetAdPreferences", get, "user:alice").preferences
    assert list(mine.interests) == ["cycling", "jazz"]
    on = pb.SetAdPreferencesRequest(
        request_id=rid(),
        preferences=pb.AdPreferences(person_id="alice", personalization_enabled=True),
        update_mask={"paths": ["personalization_enabled"]},
    )
    consent.call("SetAdPreferences", on, "user:alice")
    seen = consent.call("GetAdPreferences", get, "service:ads").preferences
    assert seen.personalization_enabled and list(seen.interests) == ["cycling", "jazz"]


def test_delivery_retries_replay_and_change_nothing(consent: Consent) -> None:
    """RecordUserMessage and RecordBusinessReply are idempotent by request_id: a retry, even
    later or from several threads at once, returns the first answer and moves no window; the
    same request_id with other parameters is refused and changes nothing."""
    msg = pb.RecordUserMessageRequest(request_id=rid(), person_id="alice", business_id="acme")
    first = consent.call("RecordUserMessage", msg, DELIVERY)
    consent.clock.advance(timedelta(hours=2))
    assert consent.call("RecordUserMessage", msg, DELIVERY) == first
    with ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(lambda _: consent.call("RecordUserMessage", msg, DELIVERY), range(16))
        )
    assert all(a == first for a in answers)
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert d.window.expire_time == first.customer_service_window.expire_time

    other = pb.RecordUserMessageRequest(
        request_id=msg.request_id,
        person_id="alice",
        business_id="acme",
        referral=c.Referral(click_id="click-1"),
    )
    code, details = rpc_error(consent.call, "RecordUserMessage", other, DELIVERY)
    assert code == grpc.StatusCode.ALREADY_EXISTS and reason_of(details) == "REQUEST_ID_REUSED"
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert d.window.kind == c.WINDOW_KIND_CUSTOMER_SERVICE and not d.free_entry_pending
    assert d.window.expire_time == first.customer_service_window.expire_time

    # Many first messages at once, each with its own request_id, for a person the service has
    # never seen: one person, one relation, every call answered.
    with ThreadPoolExecutor(8) as pool:
        done = list(pool.map(lambda i: user_message(consent, "bob", f"biz{i % 2}"), range(8)))
    assert len(done) == 8
    assert consent.check("bob", "biz0", c.CATEGORY_SERVICE).allowed
    assert consent.check("bob", "biz1", c.CATEGORY_SERVICE).allowed
