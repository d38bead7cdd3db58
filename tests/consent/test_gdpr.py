"""Export everything held on a person; erase them so nothing identifies them any more."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import grpc

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from tests.consent.conftest import Consent, rid, rpc_error

PERSON = "zq-erasable-7f3a9"


def _everything(consent: Consent) -> None:
    consent.grant(PERSON, "acme", c.CATEGORY_MARKETING, collection_reference="form-1")
    consent.grant(PERSON, "shop")
    consent.call(
        "RevokeConsent",
        pb.RevokeConsentRequest(
            request_id=rid(), person_id=PERSON, business_id="shop", categories=[c.CATEGORY_UTILITY]
        ),
        f"user:{PERSON}",
    )
    consent.call(
        "BlockBusiness",
        pb.BlockBusinessRequest(request_id=rid(), person_id=PERSON, business_id="spam"),
        f"user:{PERSON}",
    )
    consent.call(
        "RecordUserMessage",
        pb.RecordUserMessageRequest(
            request_id=rid(),
            person_id=PERSON,
            business_id="acme",
            referral=c.Referral(click_id="clk-9", campaign_id="camp-2"),
        ),
        "service:delivery",
    )
    consent.call(
        "SetAdPreferences",
        pb.SetAdPreferencesRequest(
            request_id=rid(),
            preferences=pb.AdPreferences(
                person_id=PERSON, personalization_enabled=True, interests=["chess"]
            ),
        ),
        f"user:{PERSON}",
    )


def _database_bytes(consent: Consent) -> bytes:
    url = consent.database_url
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        return b"".join(
            p.read_bytes()
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal"))
            if p.exists()
        )

    async def dump() -> bytes:
        dsn = url.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            out = []
            for t in tables:
                rows = await conn.fetch(f'SELECT t::text AS r FROM "{t["tablename"]}" t')
                out.extend(r["r"] for r in rows)
            return "\n".join(out).encode()
        finally:
            await conn.close()

    return asyncio.run(dump())


def test_export_returns_everything(consent: Consent) -> None:
    _everything(consent)
    for who in (f"user:{PERSON}", "admin"):
        resp = consent.call("ExportPersonData", pb.ExportPersonDataRequest(person_id=PERSON), who)
        assert resp.content_type == "application/json"
        doc = json.loads(resp.data)
        assert doc["person_id"] == PERSON
        rel = {r["business_id"]: r for r in doc["relations"]}
        assert set(rel) == {"acme", "shop", "spam"}
        assert rel["acme"]["granted_categories"] == ["MARKETING"]
        assert rel["acme"]["collection_reference"] == "form-1"
        assert rel["acme"]["notice"]["text"]
        assert json.loads(rel["acme"]["receipt"]["receipt_json"])["piiPrincipalId"] == PERSON
        assert rel["acme"]["entry_referral"] == {"click_id": "clk-9", "campaign_id": "camp-2"}
        assert rel["acme"]["customer_service_window_expire_time"]
        assert rel["shop"]["revoked_categories"] == ["UTILITY"]
        assert rel["spam"]["blocked"]
        assert doc["ad_preferences"] == {
            "personalization_enabled": True,
            "interests": ["chess"],
            "update_time": doc["ad_preferences"]["update_time"],
        }
        assert [e["event_type"] for e in doc["history"]] == [
            "CONSENT_EVENT_TYPE_GRANTED",
            "CONSENT_EVENT_TYPE_GRANTED",
            "CONSENT_EVENT_TYPE_REVOKED",
            "CONSENT_EVENT_TYPE_BLOCKED",
            "CONSENT_EVENT_TYPE_AD_PREFERENCES_CHANGED",
        ]


def test_erasure_leaves_no_identifier_and_the_history_still_verifies(consent: Consent) -> None:
    _everything(consent)
    assert PERSON.encode() in _database_bytes(consent)  # the scan does see it when it is there
    erase = pb.ErasePersonRequest(request_id=rid(), person_id=PERSON)
    first = consent.call("ErasePerson", erase, f"user:{PERSON}")
    assert first.erased and first.history_id
    # A retry replays the answer, with no identifier kept to do so.
    assert consent.call("ErasePerson", erase, f"user:{PERSON}") == first
    dump = _database_bytes(consent)
    assert PERSON.encode() not in dump
    assert PERSON.encode().hex().encode() not in dump
    verified = consent.call(
        "VerifyConsentHistory",
        pb.VerifyConsentHistoryRequest(history_id=first.history_id),
        "admin",
    )
    assert verified.valid and verified.event_count == 6
    # Nothing answers for the person any more.
    assert consent.check(PERSON, "acme", c.CATEGORY_MARKETING).reason == (
        pb.CONSENT_DECISION_REASON_NO_CONSENT
    )
    code, _ = rpc_error(
        consent.call, "ExportPersonData", pb.ExportPersonDataRequest(person_id=PERSON), "admin"
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = rpc_error(
        consent.call,
        "VerifyConsentHistory",
        pb.VerifyConsentHistoryRequest(history_id=first.history_id),
        f"user:{PERSON}",
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_erasing_an_unknown_person_erases_nothing(consent: Consent) -> None:
    resp = consent.call(
        "ErasePerson", pb.ErasePersonRequest(request_id=rid(), person_id="nobody"), "admin"
    )
    assert not resp.erased and not resp.history_id
