"""Signed receipts verify offline (and across restarts); the history is a verifiable chain."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import text

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit.testing import ServiceThread, metadata_for
from consent_svc.app import DEFINITION
from tests.consent.conftest import Consent, rid


def verifies(public_key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except InvalidSignature:
        return False
    return True


def test_receipt_verifies_offline_and_not_when_changed(consent: Consent) -> None:
    g = consent.grant("alice", "acme", c.CATEGORY_MARKETING, collection_reference="form-7")
    key = consent.call("GetReceiptKey", pb.GetReceiptKeyRequest(), "business:acme")
    receipt = g.receipt
    assert key.algorithm == "Ed25519" and receipt.key_id == key.key_id
    assert verifies(key.public_key, receipt.receipt_json, receipt.signature)
    doc = json.loads(receipt.receipt_json)
    assert doc["version"] == "KI-CR-v1.1.0" and doc["piiPrincipalId"] == "alice"
    assert doc["piiControllers"][0]["piiController"] == "acme"
    assert doc["collectionMethod"] == "web form" and doc["consentId"] == g.consent.consent_id
    assert doc["services"][0]["purposes"][0]["purposeCategory"] == ["marketing"]
    changed = bytearray(receipt.receipt_json)
    changed[10] ^= 0x01
    assert not verifies(key.public_key, bytes(changed), receipt.signature)
    # The stored record carries the same receipt.
    listed = consent.call("ListConsents", pb.ListConsentsRequest(person_id="alice"), "user:alice")
    assert listed.consents[0].receipt == receipt


def test_receipt_key_survives_a_restart(database_url: str, consent: Consent) -> None:
    g = consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    consent.thread.stop()
    with ServiceThread(DEFINITION, database_url=database_url, clock=consent.clock) as again:
        stub = consent_pb2_grpc.ConsentServiceStub(grpc.insecure_channel(again.target))
        key = stub.GetReceiptKey(pb.GetReceiptKeyRequest(), metadata=metadata_for("user:alice"))
        assert verifies(key.public_key, g.receipt.receipt_json, g.receipt.signature)
        # The person hash secret persisted too: the consent is still found.
        d = stub.CheckConsent(
            pb.CheckConsentRequest(business_id="acme", person_id="alice", category=1),
            metadata=metadata_for("service:delivery"),
        )
        assert d.allowed


def _history(consent: Consent, page_size: int = 0) -> list[pb.ConsentEvent]:
    events: list[pb.ConsentEvent] = []
    token = ""
    while True:
        page = consent.call(
            "GetConsentHistory",
            pb.GetConsentHistoryRequest(person_id="alice", page_size=page_size, page_token=token),
            "user:alice",
        )
        events.extend(page.events)
        token = page.next_page_token
        if not token:
            return events


def _tamper(consent: Consent, sql: str, **params: Any) -> None:
    async def run() -> None:
        async with consent.thread.runtime.db.write() as s:
            await s.execute(text(sql), params)

    consent.thread.run(run())


def test_history_is_a_hash_chain_and_tampering_breaks_it(consent: Consent) -> None:
    consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    consent.call(
        "RevokeConsent",
        pb.RevokeConsentRequest(
            request_id=rid(), person_id="alice", business_id="acme", all_categories=True
        ),
        "user:alice",
    )
    consent.call(
        "BlockBusiness",
        pb.BlockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme"),
        "user:alice",
    )
    events = _history(consent, page_size=2)
    assert [e.event_type for e in events] == [
        pb.CONSENT_EVENT_TYPE_GRANTED,
        pb.CONSENT_EVENT_TYPE_REVOKED,
        pb.CONSENT_EVENT_TYPE_BLOCKED,
    ]
    assert [e.sequence for e in events] == [1, 2, 3]
    assert events[0].prev_hash == bytes(32)
    for before, e in itertools.pairwise(events):
        assert e.prev_hash == before.hash
    assert events[1].business_id == "acme"
    assert list(events[1].categories) == [c.CATEGORY_MARKETING]
    # Anyone can recompute a hash from what the history shows.
    e = events[0]
    header = {
        "event_id": e.event_id,
        "event_time": e.event_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "event_type": e.event_type,
        "history_id": consent.call(
            "GetConsentHistory", pb.GetConsentHistoryRequest(person_id="alice"), "user:alice"
        ).history_id,
        "payload_digest": e.payload_digest.hex(),
        "sequence": e.sequence,
    }
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    assert hashlib.sha256(e.prev_hash + raw).digest() == e.hash

    verify = pb.VerifyConsentHistoryRequest(person_id="alice")
    ok = consent.call("VerifyConsentHistory", verify, "user:alice")
    assert ok.valid and ok.event_count == 3 and ok.head_hash == events[-1].hash
    # Rewrite one event as if the revocation had been a grant.
    _tamper(consent, "UPDATE history_events SET event_type = 1 WHERE sequence = 2")
    bad = consent.call("VerifyConsentHistory", verify, "user:alice")
    assert not bad.valid and bad.first_invalid_sequence == 2


def test_removing_the_last_event_breaks_the_chain(consent: Consent) -> None:
    consent.grant("alice", "acme", c.CATEGORY_MARKETING)
    consent.grant("alice", "other", c.CATEGORY_UTILITY)
    _tamper(consent, "DELETE FROM history_events WHERE sequence = 2")
    bad = consent.call(
        "VerifyConsentHistory", pb.VerifyConsentHistoryRequest(person_id="alice"), "admin"
    )
    assert not bad.valid
