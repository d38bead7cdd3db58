"""What the service holds on a person: listing, history, verification, export, erasure and the
ad-personalisation preference.

Erasure is crypto-shredding: the person's data key, their relations, the replies stored for their
own calls and for service:delivery's calls about them (replay.py) are deleted, an ERASED event
(empty payload) closes their chain, and the remaining events stay as ciphertext under a random
history_id. The chain hashes the ciphertext, so it still verifies.
ErasePerson keeps its replay answers keyed by SHA-256(principal, request_id) rather than in the
shared idempotency table, which would keep the erased person's principal in clear.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.errors import AlreadyExists, NotFound
from bizmsg.kit.timeutil import to_timestamp
from consent_svc import categories, history, store
from consent_svc.ledger import Ledger
from consent_svc.models import ErasureAnswer, HistoryEvent, Person


def _not_found(person_id: str) -> NotFound:
    return NotFound("PERSON_NOT_FOUND", "nothing is held on this person", resource_type="person")


async def list_consents(
    led: Ledger, person_id: str, after_business: str, limit: int
) -> tuple[list[pb.ConsentRecord], str | None]:
    """One page of records and the last business_id when there may be more."""
    async with led.db.read() as s:
        p = await led.person(s, person_id, create=False)
        if p is None:
            return [], None
        rows = await store.relations_page(s, p.person_hash, after_business, limit + 1)
        records = [led.record(p, r, person_id) for r in rows[:limit] if r.consent_id is not None]
        more = rows[limit - 1].business_id if len(rows) > limit else None
    return records, more


def _event(led: Ledger, p: Person | None, e: HistoryEvent) -> pb.ConsentEvent:
    ev = pb.ConsentEvent(
        event_id=e.event_id,
        sequence=e.sequence,
        event_type=e.event_type,  # type: ignore[arg-type]
        payload_digest=history.digest(e.payload),
        prev_hash=e.prev_hash,
        hash=e.hash,
    )
    ev.event_time.CopyFrom(to_timestamp(e.event_time))
    if p is not None and e.payload:
        details = led.unseal(p, e.payload, f"{e.history_id}:{e.sequence}")
        ev.details_json = json.dumps(details, sort_keys=True)
        ev.business_id = details.get("business_id", "")
        names = details.get("categories", [])
        ev.categories.extend(
            c
            for c in categories.OPT_IN_CATEGORIES
            if categories.names(categories.bit(c))[0] in names
        )
    return ev


async def consent_history(
    led: Ledger, person_id: str, after_sequence: int, limit: int
) -> tuple[str, list[pb.ConsentEvent], int | None]:
    async with led.db.read() as s:
        p = await led.person(s, person_id, create=False)
        if p is None:
            raise _not_found(person_id)
        rows = await store.events_page(s, p.history_id, after_sequence, limit + 1)
        events = [_event(led, p, e) for e in rows[:limit]]
    more = events[-1].sequence if len(rows) > limit else None
    return p.history_id, events, more


async def verify_history(
    led: Ledger, *, person_id: str = "", history_id: str = ""
) -> pb.VerifyConsentHistoryResponse:
    async with led.db.read() as s:
        if person_id:
            p = await led.person(s, person_id, create=False)
            if p is None:
                raise _not_found(person_id)
            history_id = p.history_id
        h = await store.history(s, history_id)
        if h is None:
            raise NotFound(
                "HISTORY_NOT_FOUND",
                "no such history",
                resource_type="history",
                resource_name=history_id,
            )
        rows = await store.events_page(s, history_id, 0, None)
        result = history.verify(
            (
                history.StoredEvent(
                    e.history_id,
                    e.sequence,
                    e.event_id,
                    e.event_type,
                    e.event_time,
                    e.payload,
                    e.prev_hash,
                    e.hash,
                )
                for e in rows
            ),
            head_sequence=h.head_sequence,
            head_hash=h.head_hash,
        )
    return pb.VerifyConsentHistoryResponse(
        valid=result.valid,
        event_count=result.event_count,
        first_invalid_sequence=result.first_invalid_sequence,
        head_hash=result.head_hash,
        history_id=history_id,
    )


def _iso(ts: Any) -> str | None:
    return ts.ToDatetime().isoformat() + "Z" if ts.seconds or ts.nanos else None


async def export(led: Ledger, person_id: str) -> bytes:
    """Everything held on the person, as JSON (GDPR Art. 15/20)."""
    async with led.db.read() as s:
        p = await led.person(s, person_id, create=False)
        if p is None:
            raise _not_found(person_id)
        relations = await store.relations_page(s, p.person_hash, "", 1_000_000)
        events = await store.events_page(s, p.history_id, 0, None)
        relation_docs = []
        for r in relations:
            rec = led.record(p, r, person_id)
            referral = led.unseal(p, r.entry_referral, f"referral:{r.business_id}")
            relation_docs.append(
                {
                    "business_id": r.business_id,
                    "consent_id": r.consent_id,
                    "consent_version": r.consent_version,
                    "granted_categories": categories.names(r.granted),
                    "revoked_categories": categories.names(r.revoked),
                    "consent_expire_time": _iso(rec.expire_time),
                    "collection_method": pb.CollectionMethod.Name(rec.collection_method),
                    "collection_time": _iso(rec.collection_time),
                    "collection_reference": rec.collection_reference,
                    "notice": {
                        "notice_id": rec.notice.notice_id,
                        "notice_version": rec.notice.notice_version,
                        "text": rec.notice.text,
                        "locale": rec.notice.locale,
                        "policy_url": rec.notice.policy_url,
                    },
                    "receipt": {
                        "receipt_json": rec.receipt.receipt_json.decode(),
                        "signature_b64": base64.b64encode(rec.receipt.signature).decode(),
                        "key_id": rec.receipt.key_id,
                    }
                    if rec.receipt.receipt_json
                    else None,
                    "blocked": r.blocked,
                    "block_time": r.block_time.isoformat() if r.block_time else None,
                    "last_user_message_time": (
                        r.last_user_message_time.isoformat() if r.last_user_message_time else None
                    ),
                    "customer_service_window_expire_time": (
                        r.service_expire_time.isoformat() if r.service_expire_time else None
                    ),
                    "free_entry_pending_until": (
                        r.entry_expire_time.isoformat() if r.entry_expire_time else None
                    ),
                    "free_entry_window_expire_time": (
                        r.free_entry_expire_time.isoformat() if r.free_entry_expire_time else None
                    ),
                    "entry_referral": referral,
                }
            )
        doc = {
            "person_id": person_id,
            "history_id": p.history_id,
            "created": p.create_time.isoformat(),
            "relations": relation_docs,
            "ad_preferences": {
                "personalization_enabled": p.ads_enabled,
                "interests": led.unseal(p, p.ads_interests, "ads") or [],
                "update_time": p.ads_update_time.isoformat() if p.ads_update_time else None,
            },
            "history": [
                {
                    "sequence": e.sequence,
                    "event_id": e.event_id,
                    "event_type": pb.ConsentEventType.Name(
                        pb.ConsentEventType.ValueType(e.event_type)
                    ),
                    "event_time": e.event_time.isoformat(),
                    "details": led.unseal(p, e.payload, f"{e.history_id}:{e.sequence}")
                    if e.payload
                    else None,
                    "hash": e.hash.hex(),
                    "prev_hash": e.prev_hash.hex(),
                }
                for e in events
            ],
        }
    return json.dumps(doc, sort_keys=True, indent=2).encode()


def _erasure_key(principal: str, request_id: str) -> str:
    return hashlib.sha256(f"{principal}\n{request_id}".encode()).hexdigest()


async def erase(led: Ledger, principal: str, req: pb.ErasePersonRequest) -> pb.ErasePersonResponse:
    key = _erasure_key(principal, req.request_id)
    # Salted by the request_id, so it links to nobody without it.
    fingerprint = hashlib.sha256(req.SerializeToString(deterministic=True)).hexdigest()
    async with led.db.write() as s:
        await store.secure_delete(s, led.db)
        seen = await store.erasure_answer(s, key)
        if seen is not None:
            if seen.fingerprint != fingerprint:
                raise AlreadyExists()
            return pb.ErasePersonResponse.FromString(seen.response)
        now = led.clock.now()
        resp = pb.ErasePersonResponse(erase_time=to_timestamp(now))
        p = await store.person(s, led.person_hash(req.person_id), lock=True)
        if p is not None:
            await led.record_event(s, None, p.history_id, pb.CONSENT_EVENT_TYPE_ERASED, None)
            h = await store.history(s, p.history_id, lock=True)
            assert h is not None
            h.erase_time = now
            resp.erased, resp.history_id = True, p.history_id
            await store.delete_person_rows(s, p.person_hash, f"user:{req.person_id}")
        s.add(
            ErasureAnswer(
                key=key,
                fingerprint=fingerprint,
                response=resp.SerializeToString(deterministic=True),
                create_time=now,
            )
        )
    await store.compact_sqlite(led.db)
    return resp


def _preferences(
    led: Ledger, p: Person | None, person_id: str, *, for_ads: bool
) -> pb.AdPreferences:
    prefs = pb.AdPreferences(person_id=person_id)
    if p is None:
        return prefs
    prefs.personalization_enabled = p.ads_enabled
    # Purpose limitation: ads gets interests only while the person allows personalisation.
    if p.ads_enabled or not for_ads:
        prefs.interests.extend(led.unseal(p, p.ads_interests, "ads") or [])
    if p.ads_update_time is not None:
        prefs.update_time.CopyFrom(to_timestamp(p.ads_update_time))
    return prefs


async def get_ad_preferences(led: Ledger, person_id: str, *, for_ads: bool) -> pb.AdPreferences:
    async with led.db.read() as s:
        p = await led.person(s, person_id, create=False)
        return _preferences(led, p, person_id, for_ads=for_ads)


async def set_ad_preferences(
    led: Ledger, s: AsyncSession, req: pb.SetAdPreferencesRequest, paths: set[str]
) -> pb.SetAdPreferencesResponse:
    person_id = req.preferences.person_id
    p = await led.person(s, person_id, create=True)
    assert p is not None
    p = await store.person(s, p.person_hash, lock=True)
    assert p is not None
    if "personalization_enabled" in paths:
        p.ads_enabled = req.preferences.personalization_enabled
    if "interests" in paths:
        p.ads_interests = led.seal(p, sorted(set(req.preferences.interests)), "ads")
    p.ads_update_time = led.clock.now()
    await led.record_event(
        s,
        p,
        p.history_id,
        pb.CONSENT_EVENT_TYPE_AD_PREFERENCES_CHANGED,
        {
            "personalization_enabled": p.ads_enabled,
            "interests": led.unseal(p, p.ads_interests, "ads") or [],
        },
    )
    return pb.SetAdPreferencesResponse(preferences=_preferences(led, p, person_id, for_ads=False))
