"""SendMessage: consent and billing first, then the envelope and its outbox row in one commit.

Order for a business:
- one single read: the recipient's devices and country with the business's limits and
  counters and this request_id's stored answer, if any (store.RecipientReader; on PostgreSQL
  the sends that arrive together read in one round trip);
- CheckConsent, then AuthorizeCharge;
- one write transaction, shared with the other sends of a group commit: the sender's next
  sequence number (which locks the sender) and the counters (bumped with RETURNING; past a
  limit the send is refused and the bump rolled back) run at once; the idempotency record,
  the message, its envelopes and the ACCEPTED event go in with the batch's others, one
  statement per table, just before the commit (a concurrent twin fails on the idempotency
  key there, and replays the winner's answer).
Limits count a message in the window of its arrival (read once, when the call starts), so
a burst that arrives within one second is judged as one second however long the three
calls take; that arrival time is also the message's send_time.
Whatever fails after the authorization voids it, so a refusal leaves no pending charge.
A person's message is never charged; consent records it first (opening the window).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit import calls
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import FailedPrecondition, NotFound
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.ids import new_id
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import to_timestamp
from delivery_svc import limits, store
from delivery_svc.dependencies import UNREACHABLE, ChargeRequest, Dependencies
from delivery_svc.notify import OUTBOX, Notifier, mailbox_key, status_key
from delivery_svc.policy import AUTHORIZATION_MARGIN, Status, category_name, consent_reason

log = logging.getLogger("delivery.send")
METHOD = "SendMessage"
Response = delivery_pb2.SendMessageResponse
# The group commit's work that stores one message (Sending._store_work).
StoreWork = Callable[[AsyncConnection], Coroutine[Any, Any, tuple[Response, bool]]]


@dataclass(frozen=True)
class Outgoing:
    """A validated SendMessage request."""

    sender: Principal
    sender_device_id: str
    recipient: Principal
    category: int
    envelopes: list[tuple[str, bytes]]
    ttl: timedelta
    referral: common_pb2.Referral

    @property
    def business_sends(self) -> bool:
        return self.sender.kind == "business"


@dataclass
class _Charge:
    authorization_id: str = ""
    price: common_pb2.Money | None = None
    free: bool = True
    window_kind: int = common_pb2.WINDOW_KIND_UNSPECIFIED
    free_entry_pending: bool = False


class Sending:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        idem: Idempotency,
        deps: Dependencies,
        notifier: Notifier,
        limit_settings: limits.LimitSettings,
    ) -> None:
        self.db = db
        self.clock = clock
        self.idem = idem
        self.deps = deps
        self.notifier = notifier
        self.limit_settings = limit_settings
        self.recipients = store.RecipientReader(db)
        # Settlements of sends whose caller went away (kept referenced until they finish).
        self._settling: set[asyncio.Future[None]] = set()

    async def send(self, request: delivery_pb2.SendMessageRequest, out: Outgoing) -> Response:
        arrival = self.clock.now()
        state: store.LimitState | None = None
        # Single reads (prepared statements, no transaction): whether this request_id was
        # answered, and the recipient with the limits' state (for a business, one statement
        # for both). They need not agree with each other; the limits are counted again in the
        # store transaction, and a concurrent twin is caught by the idempotency record there.
        if out.business_sends:
            recipient = await self.recipients.recipient_and_limits(
                str(out.recipient),
                out.sender.id,
                out.recipient.id,
                limits.counters(out.sender.id, out.recipient.id, arrival),
                self.idem.key(METHOD, request),
            )
            devices, country, state = recipient.devices, recipient.country, recipient.limits
            if recipient.answered is None:  # no device row carried the answer: ask alone
                async with self.db.connect() as conn:
                    stored = await self.idem.lookup(conn, METHOD, request, Response)
            else:
                stored = self.idem.stored(request, Response, *recipient.answered)
        else:
            async with self.db.connect() as conn:
                stored = await self.idem.lookup(conn, METHOD, request, Response)
                if stored is None:
                    devices, country = await store.recipient_devices(conn, str(out.recipient))
        if stored is not None:
            return stored
        _check_devices(devices, out)
        if state is not None:
            # Refuse early, before anything is charged; counted exactly when storing.
            limits.precheck(self.limit_settings, state, out.sender.id, out.recipient.id, arrival)
        message_id = new_id()
        charge = (
            await self._consent_and_charge(message_id, out, country)
            if out.business_sends
            else await self._record_user_message(message_id, out)
        )
        # The store goes to the group commit, shielded from this call: a caller that goes away
        # (cancelling this one) must not interrupt a commit that may already have landed and
        # then void the charge of a message that was stored. The outcome is settled when it is
        # known (_settle).
        write = self._store_work(request, out, message_id, charge, arrival, state)
        outcome = self.db.submit_batched(write)
        try:
            try:
                response, duplicate = await asyncio.shield(outcome)
            except IntegrityError:
                # A concurrent call with this request_id committed first (rare): answer as it
                # did, in a task of its own for the same reason.
                outcome = asyncio.ensure_future(self._after_clash(request, write))
                response, duplicate = await asyncio.shield(outcome)
        except asyncio.CancelledError:
            self._in_background(self._settle(outcome, message_id, charge))
            raise
        except BaseException:
            await self._void_quietly(message_id, charge)
            raise
        if duplicate:
            await self._void_quietly(message_id, charge)
        else:
            for device_id, _ in out.envelopes:
                self.notifier.notify(mailbox_key(str(out.recipient), device_id))
            self.notifier.notify(status_key(str(out.sender)))
            if charge.free_entry_pending:
                self.notifier.notify(OUTBOX)
        return response

    async def _consent_and_charge(self, message_id: str, out: Outgoing, country: str) -> _Charge:
        business_id, person_id = out.sender.id, out.recipient.id
        decision = await self.deps.check_consent(business_id, person_id, out.category)
        if not decision.allowed:
            reason = consent_reason(decision.reason)
            raise FailedPrecondition(
                reason,
                f"{out.recipient} does not allow {category_name(out.category)} "
                f"messages from {out.sender}: {reason}",
                violations=[
                    (
                        reason,
                        f"{out.sender}->{out.recipient}",
                        f"consent refused {category_name(out.category)}",
                    )
                ],
                metadata={"category": category_name(out.category)},
            )
        window_kind = decision.window.kind or common_pb2.WINDOW_KIND_NONE
        charge = ChargeRequest(
            message_id=message_id,
            business_id=business_id,
            country=country,
            category=out.category,
            window_kind=window_kind,
            hold=out.ttl + AUTHORIZATION_MARGIN,
        )
        auth = await self._authorize(charge)
        return _Charge(
            authorization_id=auth.authorization_id,
            price=auth.price,
            free=auth.free,
            window_kind=window_kind,
            free_entry_pending=decision.free_entry_pending,
        )

    async def _authorize(self, charge: ChargeRequest) -> billing_pb2.AuthorizeChargeResponse:
        try:
            return await self.deps.authorize(charge)
        except BaseException as e:
            if _outcome_unknown(e):
                # Billing may have authorized all the same: a stream item runs on when its
                # caller goes away, and a call that timed out may have committed. Its hold
                # would keep the business's funds until the authorization expires (the
                # message's TTL and a day). So the outbox asks again (the same request_id
                # replays billing's answer, or authorizes now) and voids that, retrying while
                # billing cannot be reached, across restarts.
                self._in_background(self._queue_release(charge))
            raise

    async def _queue_release(self, charge: ChargeRequest) -> None:
        row = store.outbox_row("RELEASE", charge.payload(), self.clock.now())
        try:
            await self.db.write_batched(lambda conn: store.add_outbox(conn, [row]))
        except Exception:
            log.exception(
                "could not queue the release of an authorization; if billing made one, its "
                "timeout will release it",
                extra={"fields": {"message_id": charge.message_id}},
            )
            return
        self.notifier.notify(OUTBOX)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs `work` after the call that started it is over: not bound by that call's
        deadline, and kept referenced until it ends."""

        async def detached() -> None:
            calls.enter(calls.current_request_id(), None)  # this task's own copy of the context
            await work

        task = asyncio.ensure_future(detached())
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _record_user_message(self, message_id: str, out: Outgoing) -> _Charge:
        await self.deps.record_user_message(
            message_id, out.sender.id, out.recipient.id, out.referral
        )
        return _Charge()

    def _store_work(
        self,
        request: delivery_pb2.SendMessageRequest,
        out: Outgoing,
        message_id: str,
        charge: _Charge,
        arrival: datetime,
        state: store.LimitState | None,
    ) -> StoreWork:
        """The group commit's work that stores the message: (the response, False) once run."""
        message = _message_row(out, message_id, charge, arrival)
        response = _response(message, charge)
        envelopes = [
            {
                "message_id": message_id,
                "recipient": message["recipient"],
                "device_id": device_id,
                "ciphertext": ciphertext,
                "expire_time": message["expire_time"],
            }
            for device_id, ciphertext in out.envelopes
        ]

        async def write(conn: AsyncConnection) -> tuple[Response, bool]:
            # The rows of the answer, the message, its envelopes and its event go in with the
            # other sends of the group commit, just before it commits (a twin request fails
            # there, and the batch is run again send by send: see Database.write_batched).
            await self.idem.save(conn, METHOD, request, response, later=True)
            seq = await store.next_seq(conn, message["sender"])
            if state is not None:
                await limits.count(
                    conn,
                    self.limit_settings,
                    state,
                    out.sender.id,
                    out.recipient.id,
                    charge.window_kind,
                    arrival,
                )
            now = self.clock.now()
            event = {
                "sender": message["sender"],
                "seq": seq,
                "message_id": message_id,
                "recipient": message["recipient"],
                "status": Status.MESSAGE_STATUS_ACCEPTED,
                "event_time": now,
                "reason": "",
            }
            await store.add_sent_message(conn, message, envelopes, event)
            if charge.free_entry_pending:
                # This reply opens the 72-hour free-entry window at consent.
                payload = {
                    "message_id": message_id,
                    "business_id": out.sender.id,
                    "person_id": out.recipient.id,
                }
                await store.add_outbox(conn, [store.outbox_row("BUSINESS_REPLY", payload, now)])
            return response, False

        return write

    async def _after_clash(
        self,
        request: delivery_pb2.SendMessageRequest,
        write: StoreWork,
    ) -> tuple[Response, bool]:
        """After the store failed on this request_id's key: (the first answer, True), or, if
        that answer cannot be read (it was dropped meanwhile), the store again."""
        for attempt in range(3):
            async with self.db.read() as s:
                stored = await self.idem.lookup(s, METHOD, request, Response)
            if stored is not None:
                return stored, True  # or ALREADY_EXISTS if its parameters differ
            if attempt == 2:
                break
            try:
                return await self.db.write_batched(write)
            except IntegrityError:
                continue
        raise FailedPrecondition("CONFLICT", "a concurrent request with this request_id failed")

    async def _settle(
        self,
        outcome: asyncio.Future[tuple[Response, bool]],
        message_id: str,
        charge: _Charge,
    ) -> None:
        """After the caller went away: a message that was stored keeps its authorization;
        one that was not (or lost to a twin) has it voided."""
        try:
            _, duplicate = await outcome
        except BaseException:
            duplicate = True
        if duplicate:
            await self._void_quietly(message_id, charge)

    async def _void_quietly(self, message_id: str, charge: _Charge) -> None:
        """Releases an authorization whose message was not stored; if billing cannot be
        reached, its own timeout releases it (the authorization carries one)."""
        if not charge.authorization_id:
            return
        try:
            await self.deps.void(
                f"void-{message_id}",
                charge.authorization_id,
                billing_pb2.VOID_REASON_CANCELLED,
            )
        except grpc.aio.AioRpcError as e:
            log.warning(
                "could not void an unused authorization; billing's timeout will",
                extra={"fields": {"message_id": message_id, "code": e.code().name}},
            )


def _outcome_unknown(e: BaseException) -> bool:
    """Whether a failed authorization call may have authorized all the same: the caller went
    away, or billing could not answer in time (the call failed, not billing's rules)."""
    if isinstance(e, asyncio.CancelledError):
        return True
    cause = e.__cause__
    return isinstance(cause, grpc.aio.AioRpcError) and cause.code() in UNREACHABLE


def _check_devices(devices: set[str], out: Outgoing) -> None:
    missing = [d for d, _ in out.envelopes if d not in devices]
    if missing:
        raise NotFound(
            "DEVICE_NOT_FOUND",
            f"{out.recipient} has no device {missing[0]!r}; fetch its prekey bundles again",
            resource_type="device",
            resource_name=f"{out.recipient}/{missing[0]}",
        )


def _message_row(out: Outgoing, message_id: str, charge: _Charge, now: datetime) -> dict[str, Any]:
    price = charge.price or common_pb2.Money()
    return {
        "message_id": message_id,
        "sender": str(out.sender),
        "sender_device_id": out.sender_device_id,
        "recipient": str(out.recipient),
        "category": out.category,
        "status": Status.MESSAGE_STATUS_ACCEPTED,
        "send_time": now,
        "expire_time": now + out.ttl,
        "status_time": now,
        "window_kind": charge.window_kind,
        "authorization_id": charge.authorization_id,
        "price_micros": price.amount_micros,
        "currency_code": price.currency_code,
        "free": charge.free,
        "referral_click_id": out.referral.click_id,
        "referral_campaign_id": out.referral.campaign_id,
    }


def _response(message: dict[str, Any], charge: _Charge) -> Response:
    return Response(
        message_id=message["message_id"],
        status=Status.MESSAGE_STATUS_ACCEPTED,
        price=common_pb2.Money(
            amount_micros=message["price_micros"], currency_code=message["currency_code"]
        ),
        free=message["free"],
        expire_time=to_timestamp(message["expire_time"]),
        window_kind=charge.window_kind,  # type: ignore[arg-type]
    )
