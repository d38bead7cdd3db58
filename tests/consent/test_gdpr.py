"""Export everything held on a person; erase them so nothing identifies them any more."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import asyncpg
import grpc
from google.protobuf.message import Message
from sqlalchemy import text

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.idempotency import fingerprint
from bizmsg.kit.storage import postgres_url
from consent_svc import crypto
from tests.consent.conftest import Consent, rid, rpc_error

PERSON = "zq-erasable-7f3a9"
DELIVERY = "service:delivery"


def _everything(consent: Consent) -> list[Message]:
    """Every kind of data on PERSON, through the person's own calls and delivery's; returns the
    requests sent."""
    me = f"user:{PERSON}"
    sent: list[Message] = []

    def call(method: str, req: Message, principal: str) -> None:
        consent.call(method, req, principal)
        sent.append(req)

    sent.append(consent.grant(PERSON, "acme", c.CATEGORY_MARKETING, collection_reference="form-1"))
    sent.append(consent.grant(PERSON, "shop"))
    call(
        "RevokeConsent",
        pb.RevokeConsentRequest(
            request_id=rid(), person_id=PERSON, business_id="shop", categories=[c.CATEGORY_UTILITY]
        ),
        me,
    )
    call(
        "BlockBusiness",
        pb.BlockBusinessRequest(request_id=rid(), person_id=PERSON, business_id="spam"),
        me,
    )
    # Delivery's calls: its request_ids are its message ids, here one that even names the person.
    call(
        "RecordUserMessage",
        pb.RecordUserMessageRequest(
            request_id=f"msg-{PERSON}-1",
            person_id=PERSON,
            business_id="acme",
            referral=c.Referral(click_id="clk-9", campaign_id="camp-2"),
        ),
        DELIVERY,
    )
    call(
        "RecordUserMessage",
        pb.RecordUserMessageRequest(
            request_id=rid(),
            person_id=PERSON,
            business_id="shop",
            referral=c.Referral(click_id="clk-10"),
        ),
        DELIVERY,
    )
    call(
        "RecordBusinessReply",
        pb.RecordBusinessReplyRequest(request_id=rid(), business_id="shop", person_id=PERSON),
        DELIVERY,
    )
    call(
        "SetAdPreferences",
        pb.SetAdPreferencesRequest(
            request_id=rid(),
            preferences=pb.AdPreferences(
                person_id=PERSON, personalization_enabled=True, interests=["chess"]
            ),
        ),
        me,
    )
    return sent


def _sqlite_bytes(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")) if p.exists()
    )


def _database_bytes(consent: Consent, *, checkpoint: bool = True) -> bytes:
    """The whole database: on SQLite the file's bytes (with its WAL), after folding the WAL in;
    on PostgreSQL every table of every schema as text (bytea as hex)."""
    url = consent.database_url
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        if checkpoint:
            conn = sqlite3.connect(path)
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                assert busy == 0, "the checkpoint could not run to the end"
            finally:
                conn.close()
        return _sqlite_bytes(path)

    async def dump() -> bytes:
        dsn = postgres_url(url, driver="postgresql")
        conn = await asyncpg.connect(dsn)
        try:
            tables = await conn.fetch(
                "SELECT table_schema, table_name FROM information_schema.tables"
                " WHERE table_type = 'BASE TABLE'"
                " AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            assert len(tables) >= 8
            out = []
            for t in tables:
                name = f'"{t["table_schema"]}"."{t["table_name"]}"'
                rows = await conn.fetch(f"SELECT t::text AS r FROM {name} t")
                out.extend(r["r"] for r in rows)
            return "\n".join(out).encode()
        finally:
            await conn.close()

    return asyncio.run(dump())


def _person_hash(consent: Consent) -> str:
    async def secret() -> bytes:
        async with consent.thread.runtime.db.read() as s:
            q = text("SELECT secret FROM service_keys WHERE name = 'person_hash'")
            row = await s.execute(q)
            return bytes(row.scalar_one())

    return crypto.person_hash(consent.thread.run(secret()), PERSON)


def _traces(consent: Consent, sent: list[Message]) -> dict[str, bytes]:
    """What would identify or link the person, as it would appear in the dump: the id itself,
    their row key, and the request_ids and request hashes of every call about them."""
    traces = {"person_id": PERSON.encode(), "person_id hex": PERSON.encode().hex().encode()}
    traces["person_hash"] = _person_hash(consent).encode()
    for i, req in enumerate(sent):
        name = f"{i}:{type(req).__name__}"
        if isinstance(req, pb.GrantConsentResponse):
            traces[f"{name} receipt id"] = req.receipt.receipt_id.encode()
            traces[f"{name} consent id"] = req.consent.consent_id.encode()
            continue
        traces[f"{name} request_id"] = req.request_id.encode()  # type: ignore[attr-defined]
        traces[f"{name} fingerprint"] = fingerprint(req).encode()
    return traces


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
        assert rel["shop"]["free_entry_window_expire_time"]  # opened by the business's reply
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
    sent = _everything(consent)
    traces = _traces(consent, sent)
    before = _database_bytes(consent)
    # The scan does see what is there: the id (the kit's table keys the person's own calls by
    # their principal) and the row key.
    assert traces["person_id"] in before and traces["person_hash"] in before
    erase = pb.ErasePersonRequest(request_id=rid(), person_id=PERSON)
    first = consent.call("ErasePerson", erase, f"user:{PERSON}")
    assert first.erased and first.history_id
    # A retry replays the answer, with no identifier kept to do so.
    assert consent.call("ErasePerson", erase, f"user:{PERSON}") == first
    # The service folds the WAL itself: the file is clean even before the test's checkpoint.
    for dump in (_database_bytes(consent, checkpoint=False), _database_bytes(consent)):
        found = [what for what, trace in traces.items() if trace in dump]
        assert not found, f"still in the database after erasure: {found}"
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
