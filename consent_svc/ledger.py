"""The consent ledger: applies the rules to the stored rows inside one transaction.

Every write runs inside the caller's `db.write()` session (via the kit's idempotency), so an
answer is committed before it is returned: a revocation or block is visible to every CheckConsent
that starts after RevokeConsent/BlockBusiness returned, on any replica. CheckConsent reads one row
by primary key, as one statement that starts after anything that returned, and keeps no cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import NotFound
from bizmsg.kit.ids import new_id
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import from_timestamp, to_timestamp
from consent_svc import categories, crypto, history, store
from consent_svc.decision import Decision, RelationState, decide
from consent_svc.models import History, HistoryEvent, Person, Relation
from consent_svc.receipts import ReceiptFacts, sign_receipt
from consent_svc.windows import WindowTimes, after_business_reply, after_user_message

_METHOD_NAMES = {v: k for k, v in pb.CollectionMethod.items()}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _window_times(r: Relation) -> WindowTimes:
    return WindowTimes(r.service_expire_time, r.entry_expire_time, r.free_entry_expire_time)


def _state(row: Sequence[Any] | None) -> RelationState | None:
    """A relation row's columns in store._STATE's order, as the decision rule's input."""
    if row is None:
        return None
    cid, version, granted, revoked, expire, blocked, service, entry, free_entry = row
    return RelationState(
        cid,
        version,
        granted,
        revoked,
        expire,
        bool(blocked),
        WindowTimes(service, entry, free_entry),
    )


def window_pb(kind: int, expire: datetime | None) -> common_pb2.Window:
    w = common_pb2.Window(kind=kind)  # type: ignore[arg-type]
    if expire is not None:
        w.expire_time.CopyFrom(to_timestamp(expire))
    return w


@dataclass
class Ledger:
    db: Database
    clock: Clock
    hash_secret: bytes
    signer: crypto.ReceiptSigner
    reader: store.RelationReader = field(init=False)

    def __post_init__(self) -> None:
        self.reader = store.RelationReader(self.db)

    def person_hash(self, person_id: str) -> str:
        return crypto.person_hash(self.hash_secret, person_id)

    # --- persons, sealing and history -------------------------------------------------------

    async def person(self, s: AsyncSession, person_id: str, *, create: bool) -> Person | None:
        ph = self.person_hash(person_id)
        p = await store.person(s, ph)
        if p is None and create:
            now = self.clock.now()
            hid = new_id()
            s.add(
                History(history_id=hid, head_sequence=0, head_hash=history.GENESIS, create_time=now)
            )
            p = Person(
                person_hash=ph,
                history_id=hid,
                data_key=crypto.new_data_key(),
                ads_enabled=False,
                create_time=now,
            )
            s.add(p)
            await s.flush()
        return p

    def seal(self, p: Person, obj: Any, aad: str) -> bytes:
        return crypto.seal(p.data_key, _dumps(obj), aad.encode())

    def unseal(self, p: Person, data: bytes | None, aad: str) -> Any:
        if data is None:
            return None
        return json.loads(crypto.unseal(p.data_key, data, aad.encode()))

    async def record_event(
        self, s: AsyncSession, p: Person | None, history_id: str, event_type: int, details: Any
    ) -> None:
        """Append one event to the history's chain; details are sealed with the person's key
        (an erasure event, with no person left, carries an empty payload)."""
        h = await store.history(s, history_id, lock=True)
        assert h is not None  # made with the person, never deleted
        now = self.clock.now()
        seq, event_id = h.head_sequence + 1, new_id()
        payload = b"" if p is None else self.seal(p, details, f"{history_id}:{seq}")
        new_hash = history.event_hash(
            h.head_hash,
            history_id=history_id,
            sequence=seq,
            event_id=event_id,
            event_type=event_type,
            event_time=now,
            payload_digest=history.digest(payload),
        )
        s.add(
            HistoryEvent(
                history_id=history_id,
                sequence=seq,
                event_id=event_id,
                event_type=event_type,
                event_time=now,
                payload=payload,
                prev_hash=h.head_hash,
                hash=new_hash,
            )
        )
        h.head_sequence, h.head_hash = seq, new_hash

    async def _relation(self, s: AsyncSession, p: Person, business_id: str) -> Relation:
        r = await store.relation(s, p.person_hash, business_id, lock=True)
        if r is None:
            r = Relation(
                person_hash=p.person_hash,
                business_id=business_id,
                consent_version=0,
                granted=0,
                revoked=0,
                blocked=False,
                update_time=self.clock.now(),
            )
            s.add(r)
            await s.flush()
        return r

    def record(self, p: Person, r: Relation, person_id: str) -> pb.ConsentRecord:
        rec = pb.ConsentRecord(
            consent_id=r.consent_id or "",
            version=r.consent_version,
            person_id=person_id,
            business_id=r.business_id,
            granted_categories=categories.categories(r.granted),  # type: ignore[arg-type]
            revoked_categories=categories.categories(r.revoked),  # type: ignore[arg-type]
            blocked=r.blocked,
        )
        rec.update_time.CopyFrom(to_timestamp(r.update_time))
        if r.consent_expire_time is not None:
            rec.expire_time.CopyFrom(to_timestamp(r.consent_expire_time))
        d = self.unseal(p, r.consent_details, f"details:{r.business_id}")
        if d:
            rec.collection_method = pb.CollectionMethod.Value(d["collection_method"])
            rec.notice.CopyFrom(pb.Notice(**d["notice"]))
            rec.collection_time.CopyFrom(to_timestamp(datetime.fromisoformat(d["collection_time"])))
            rec.collection_reference = d["collection_reference"]
            rec.receipt.ParseFromString(bytes.fromhex(d["receipt"]))
        return rec

    # --- consents ---------------------------------------------------------------------------

    async def grant(self, s: AsyncSession, req: pb.GrantConsentRequest) -> pb.GrantConsentResponse:
        now = self.clock.now()
        bits = categories.ALL_BITS if req.all_categories else categories.mask(req.categories)
        p = await self.person(s, req.person_id, create=True)
        assert p is not None
        r = await self._relation(s, p, req.business_id)
        if r.consent_id is None:
            r.consent_id = new_id()
        r.consent_version += 1
        r.granted |= bits
        r.revoked &= ~bits
        r.consent_expire_time = (
            from_timestamp(req.expire_time) if req.HasField("expire_time") else None
        )
        r.update_time = now
        collected = from_timestamp(req.collection_time) if req.HasField("collection_time") else now
        assert collected is not None
        notice = {
            k: v
            for k, v in {
                "notice_id": req.notice.notice_id,
                "notice_version": req.notice.notice_version,
                "text": req.notice.text,
                "locale": req.notice.locale,
                "policy_url": req.notice.policy_url,
            }.items()
            if v
        }
        facts = ReceiptFacts(
            receipt_id=new_id(),
            consent_id=r.consent_id,
            consent_version=r.consent_version,
            person_id=req.person_id,
            business_id=req.business_id,
            category_bits=bits,
            collection_method=req.collection_method,
            collection_time=collected,
            expire_time=r.consent_expire_time,
            notice=notice,
            collection_reference=req.collection_reference,
        )
        receipt = sign_receipt(facts, self.signer)
        details = {
            "collection_method": _METHOD_NAMES[req.collection_method],
            "notice": notice,
            "collection_time": collected.isoformat(),
            "collection_reference": req.collection_reference,
            "receipt": receipt.SerializeToString(deterministic=True).hex(),
        }
        r.consent_details = self.seal(p, details, f"details:{r.business_id}")
        await self.record_event(
            s,
            p,
            p.history_id,
            pb.CONSENT_EVENT_TYPE_GRANTED,
            {
                "business_id": req.business_id,
                "categories": categories.names(bits),
                "consent_id": r.consent_id,
                "consent_version": r.consent_version,
                "receipt_id": facts.receipt_id,
                **{k: v for k, v in details.items() if k != "receipt"},
            },
        )
        return pb.GrantConsentResponse(consent=self.record(p, r, req.person_id), receipt=receipt)

    async def revoke(
        self, s: AsyncSession, req: pb.RevokeConsentRequest
    ) -> pb.RevokeConsentResponse:
        p = await self.person(s, req.person_id, create=False)
        r = (
            None
            if p is None
            else await store.relation(s, p.person_hash, req.business_id, lock=True)
        )
        if p is None or r is None or r.consent_id is None:
            raise NotFound(
                "CONSENT_NOT_FOUND",
                "this person never opted in to this business",
                resource_type="consent",
                resource_name=req.business_id,
            )
        bits = categories.ALL_BITS if req.all_categories else categories.mask(req.categories)
        withdrawn = r.granted & bits
        if withdrawn:
            r.granted &= ~withdrawn
            r.revoked |= withdrawn
            r.consent_version += 1
            r.update_time = self.clock.now()
            await self.record_event(
                s,
                p,
                p.history_id,
                pb.CONSENT_EVENT_TYPE_REVOKED,
                {
                    "business_id": req.business_id,
                    "categories": categories.names(withdrawn),
                    "consent_id": r.consent_id,
                    "consent_version": r.consent_version,
                },
            )
        return pb.RevokeConsentResponse(consent=self.record(p, r, req.person_id))

    async def block(
        self, s: AsyncSession, req: pb.BlockBusinessRequest
    ) -> pb.BlockBusinessResponse:
        p = await self.person(s, req.person_id, create=True)
        assert p is not None
        r = await self._relation(s, p, req.business_id)
        if not r.blocked:
            r.blocked, r.block_time = True, self.clock.now()
            r.update_time = r.block_time
            await self.record_event(
                s, p, p.history_id, pb.CONSENT_EVENT_TYPE_BLOCKED, {"business_id": req.business_id}
            )
        assert r.block_time is not None
        return pb.BlockBusinessResponse(block_time=to_timestamp(r.block_time))

    async def unblock(
        self, s: AsyncSession, req: pb.UnblockBusinessRequest
    ) -> pb.UnblockBusinessResponse:
        p = await self.person(s, req.person_id, create=False)
        r = (
            None
            if p is None
            else await store.relation(s, p.person_hash, req.business_id, lock=True)
        )
        if p is None or r is None or not r.blocked:
            return pb.UnblockBusinessResponse(was_blocked=False)
        r.blocked, r.block_time, r.update_time = False, None, self.clock.now()
        await self.record_event(
            s, p, p.history_id, pb.CONSENT_EVENT_TYPE_UNBLOCKED, {"business_id": req.business_id}
        )
        return pb.UnblockBusinessResponse(was_blocked=True)

    async def check(self, business_id: str, person_id: str, category: int) -> Decision:
        row = await self.reader.state(self.person_hash(person_id), business_id)
        return decide(_state(row), category, self.clock.now())

    # --- windows ----------------------------------------------------------------------------

    async def record_user_message(
        self, s: AsyncSession, req: pb.RecordUserMessageRequest
    ) -> pb.RecordUserMessageResponse:
        now = self.clock.now()
        ph = self.person_hash(req.person_id)
        conn = await s.connection()
        key = await store.data_key(conn, ph)
        if key is None:  # the person's first contact with the service
            p = await self.person(s, req.person_id, create=True)
            assert p is not None
            key = p.data_key
        # The window rule (windows.after_user_message) with the stored times, in one upsert:
        # the service window always moves to now + 24 h; a referral arms the entry point
        # unless a free-entry window is open, which the statement decides on the row.
        w = after_user_message(WindowTimes(), now, referral=req.HasField("referral"))
        referral = None
        if req.HasField("referral"):
            r = {"click_id": req.referral.click_id, "campaign_id": req.referral.campaign_id}
            referral = crypto.seal(key, _dumps(r), f"referral:{req.business_id}".encode())
        service_expire, entry_expire = await store.record_user_message(
            conn,
            {
                "ph": ph,
                "biz": req.business_id,
                "now": now,
                "service": w.service_expire_time,
                "entry": w.entry_expire_time,
                "referral": referral,
            },
        )
        resp = pb.RecordUserMessageResponse(
            customer_service_window=window_pb(
                common_pb2.WINDOW_KIND_CUSTOMER_SERVICE, service_expire
            ),
            free_entry_pending=entry_expire is not None and now < entry_expire,
        )
        if resp.free_entry_pending:
            resp.pending_expire_time.CopyFrom(to_timestamp(entry_expire))
        return resp

    async def record_business_reply(
        self, s: AsyncSession, req: pb.RecordBusinessReplyRequest
    ) -> pb.RecordBusinessReplyResponse:
        now = self.clock.now()
        ph = self.person_hash(req.person_id)
        conn = await s.connection()
        state = _state(await store.relation_state(conn, ph, req.business_id))
        if state is None:
            return pb.RecordBusinessReplyResponse(
                window=window_pb(common_pb2.WINDOW_KIND_NONE, None)
            )
        w, opened = after_business_reply(state.windows, now)
        if w != state.windows:
            await store.update_windows(
                conn,
                {
                    "ph": ph,
                    "biz": req.business_id,
                    "entry": w.entry_expire_time,
                    "free_entry": w.free_entry_expire_time,
                    "now": now,
                },
                clear_referral=w.entry_expire_time is None,
            )
        d = decide(replace(state, windows=w), common_pb2.CATEGORY_SERVICE, now)
        return pb.RecordBusinessReplyResponse(
            window=window_pb(d.window.kind, d.window.expire_time), free_entry_opened=opened
        )
