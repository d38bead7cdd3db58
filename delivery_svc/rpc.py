"""gRPC servicer of the delivery service: validate, authorize, convert; the rules live in
keydir, sending, mailbox and limits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit.auth import Principal, current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import PermissionDenied
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import from_duration
from bizmsg.kit.validation import (
    PageToken,
    Validator,
    check_enum,
    check_id,
    check_request_id,
)
from bizmsg.sdk.keys import verify_signed_pre_key
from delivery_svc import store
from delivery_svc.keydir import KeyDirectory
from delivery_svc.limits import load as load_limits
from delivery_svc.mailbox import Mailbox
from delivery_svc.notify import OUTBOX, Notifier, status_key
from delivery_svc.policy import (
    KEY_SIZE,
    MAX_DEVICES_PER_MESSAGE,
    MAX_ENVELOPE_BYTES,
    MAX_IDS_PER_CALL,
    MAX_PRE_KEYS_PER_CALL,
    SIGNATURE_SIZE,
    Tier,
    ttl_bounds,
)
from delivery_svc.sending import Outgoing, Sending

DEVICE_ID_MAX = 64


def _caller(*kinds: str) -> Principal:
    p = current_principal()
    if p.kind not in kinds:
        raise PermissionDenied(message=f"{p} may not call this; only {' or '.join(kinds)}")
    return p


def _check_country(v: Validator, field: str, value: str, *, required: bool) -> None:
    if not value:
        if required:
            v.add(field, "is required for a person's device (ISO 3166-1 alpha-2)")
        return
    v.check(len(value) == 2 and value.isascii() and value.isupper(), field, "must be like 'DE'")


def _check_ids(v: Validator, field: str, ids: Sequence[str]) -> None:
    if not v.check(0 < len(ids) <= MAX_IDS_PER_CALL, field, f"needs 1..{MAX_IDS_PER_CALL} ids"):
        return
    for i, value in enumerate(ids):
        check_id(v, f"{field}[{i}]", value, max_len=36)
    v.check(len(set(ids)) == len(ids), field, "must not repeat an id")


def _parse_principal(v: Validator, field: str, value: str, kinds: Sequence[str]) -> Principal:
    try:
        p = Principal.parse(value)
    except ValueError:
        v.add(field, "must be 'user:<person_id>' or 'business:<business_id>'")
        return Principal("user", "")
    v.check(p.kind in kinds, field, f"must name a {' or '.join(kinds)}")
    return p


class DeliveryServicer(delivery_pb2_grpc.DeliveryServiceServicer):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        idem: Idempotency,
        keys: KeyDirectory,
        sending: Sending,
        mailbox: Mailbox,
        notifier: Notifier,
    ) -> None:
        self.db = db
        self.clock = clock
        self.idem = idem
        self.keys = keys
        self.sending = sending
        self.mailbox = mailbox
        self.notifier = notifier

    # --- key directory -----------------------------------------------------------------------

    async def PublishKeys(
        self, request: delivery_pb2.PublishKeysRequest, context: Any
    ) -> delivery_pb2.PublishKeysResponse:
        owner = _caller("user", "business")
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "device_id", request.device_id, max_len=DEVICE_ID_MAX)
        v.check(len(request.identity_key) == KEY_SIZE, "identity_key", "must be 32 bytes")
        spk = request.signed_pre_key
        v.check(len(spk.public_key) == KEY_SIZE, "signed_pre_key.public_key", "must be 32 bytes")
        if (
            v.check(
                len(spk.signature) == SIGNATURE_SIZE, "signed_pre_key.signature", "must be 64 bytes"
            )
            and len(request.identity_key) == KEY_SIZE
            and len(spk.public_key) == KEY_SIZE
        ):
            v.check(
                verify_signed_pre_key(request.identity_key, spk.public_key, spk.signature),
                "signed_pre_key.signature",
                "is not the identity key's XEdDSA signature of the signed prekey",
            )
        keys = list(request.one_time_pre_keys)
        v.check(
            len(keys) <= MAX_PRE_KEYS_PER_CALL,
            "one_time_pre_keys",
            f"at most {MAX_PRE_KEYS_PER_CALL} per call",
        )
        for i, k in enumerate(keys):
            v.check(len(k) == KEY_SIZE, f"one_time_pre_keys[{i}]", "must be 32 bytes")
        v.check(len(set(keys)) == len(keys), "one_time_pre_keys", "must not repeat a key")
        _check_country(v, "country_code", request.country_code, required=owner.kind == "user")
        v.raise_if_any()
        return await self.keys.publish(owner, request)

    async def GetPreKeyBundle(
        self, request: delivery_pb2.GetPreKeyBundleRequest, context: Any
    ) -> delivery_pb2.GetPreKeyBundleResponse:
        caller = _caller("user", "business")
        v = Validator()
        owner = _parse_principal(v, "owner", request.owner, ("user", "business"))
        check_id(v, "device_id", request.device_id, required=False, max_len=DEVICE_ID_MAX)
        if request.category:
            check_enum(v, "category", request.category, common_pb2.Category)
        v.raise_if_any()
        # People and businesses talk to each other (and to their own other devices), nothing else.
        if owner != caller and owner.kind == caller.kind:
            raise PermissionDenied(message=f"{caller} may not fetch the keys of {owner}")
        return await self.keys.bundles(caller, owner, request.device_id, request.category)

    async def GetPreKeyCount(
        self, request: delivery_pb2.GetPreKeyCountRequest, context: Any
    ) -> delivery_pb2.GetPreKeyCountResponse:
        owner = _caller("user", "business")
        v = Validator()
        check_id(v, "device_id", request.device_id, max_len=DEVICE_ID_MAX)
        v.raise_if_any()
        count = await self.keys.count(owner, request.device_id)
        return delivery_pb2.GetPreKeyCountResponse(one_time_pre_key_count=count)

    # --- sending -----------------------------------------------------------------------------

    async def SendMessage(
        self, request: delivery_pb2.SendMessageRequest, context: Any
    ) -> delivery_pb2.SendMessageResponse:
        sender = _caller("user", "business")
        other = "user" if sender.kind == "business" else "business"
        v = Validator()
        check_request_id(v, request.request_id)
        recipient = _parse_principal(v, "recipient", request.recipient, (other,))
        category = request.category
        if sender.kind == "business":
            check_enum(v, "category", category, common_pb2.Category)
        else:
            # A person's message is a conversation message: SERVICE, never charged.
            v.check(
                category in (common_pb2.CATEGORY_UNSPECIFIED, common_pb2.CATEGORY_SERVICE),
                "category",
                "a person's message is SERVICE (or unspecified)",
            )
            category = common_pb2.CATEGORY_SERVICE
        check_id(v, "sender_device_id", request.sender_device_id, max_len=DEVICE_ID_MAX)
        envelopes = [(e.device_id, e.ciphertext) for e in request.envelopes]
        # (Messages with numbers in them are made only for a violation: this runs per message.)
        if not 0 < len(envelopes) <= MAX_DEVICES_PER_MESSAGE:
            v.add("envelopes", f"needs 1..{MAX_DEVICES_PER_MESSAGE} envelopes")
        else:
            for i, (device_id, ciphertext) in enumerate(envelopes):
                check_id(v, f"envelopes[{i}].device_id", device_id, max_len=DEVICE_ID_MAX)
                if not 0 < len(ciphertext) <= MAX_ENVELOPE_BYTES:
                    v.add(f"envelopes[{i}].ciphertext", f"must be 1..{MAX_ENVELOPE_BYTES} bytes")
            v.check(
                len({d for d, _ in envelopes}) == len(envelopes),
                "envelopes",
                "one envelope per device",
            )
        lo, default, hi = ttl_bounds(category)
        ttl = from_duration(request.ttl) if request.HasField("ttl") else default
        if not lo <= ttl <= hi:
            v.add(
                "ttl",
                f"must be between {int(lo.total_seconds())} s and {int(hi.total_seconds())} s "
                "for this category",
            )
        if request.HasField("referral"):
            v.check(sender.kind == "user", "referral", "only a person's message carries one")
            check_id(v, "referral.click_id", request.referral.click_id, required=False)
            check_id(v, "referral.campaign_id", request.referral.campaign_id, required=False)
        v.raise_if_any()
        out = Outgoing(
            sender=sender,
            sender_device_id=request.sender_device_id,
            recipient=recipient,
            category=category,
            envelopes=envelopes,
            ttl=ttl,
            referral=request.referral,
        )
        return await self.sending.send(request, out)

    # --- receiving ---------------------------------------------------------------------------

    async def ReceiveMessages(
        self, request: delivery_pb2.ReceiveMessagesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.ReceiveMessagesResponse]:
        owner = _caller("user", "business")
        v = Validator()
        check_id(v, "device_id", request.device_id, max_len=DEVICE_ID_MAX)
        v.raise_if_any()
        async for item in self.mailbox.receive(owner, request.device_id, request.follow):
            yield item

    async def AckMessages(
        self, request: delivery_pb2.AckMessagesRequest, context: Any
    ) -> delivery_pb2.AckMessagesResponse:
        owner = _caller("user", "business")
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "device_id", request.device_id, max_len=DEVICE_ID_MAX)
        _check_ids(v, "message_ids", request.message_ids)
        v.raise_if_any()
        changed: set[str] = set()

        async def work(s: AsyncSession) -> delivery_pb2.AckMessagesResponse:
            response, senders = await self.mailbox.ack(
                s, owner, request.device_id, request.message_ids
            )
            changed.update(senders)
            return response

        response = await self.idem.run(
            self.db, "AckMessages", request, delivery_pb2.AckMessagesResponse, work
        )
        for sender in changed:
            self.notifier.notify(status_key(sender))
        if changed:
            self.notifier.notify(OUTBOX)  # the captures just queued
        return response

    async def MarkRead(
        self, request: delivery_pb2.MarkReadRequest, context: Any
    ) -> delivery_pb2.MarkReadResponse:
        owner = _caller("user", "business")
        v = Validator()
        check_request_id(v, request.request_id)
        _check_ids(v, "message_ids", request.message_ids)
        v.raise_if_any()
        changed: set[str] = set()

        async def work(s: AsyncSession) -> delivery_pb2.MarkReadResponse:
            response, senders = await self.mailbox.mark_read(s, owner, request.message_ids)
            changed.update(senders)
            return response

        response = await self.idem.run(
            self.db, "MarkRead", request, delivery_pb2.MarkReadResponse, work
        )
        for sender in changed:
            self.notifier.notify(status_key(sender))
        return response

    async def StreamStatuses(
        self, request: delivery_pb2.StreamStatusesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.StreamStatusesResponse]:
        sender = _caller("user", "business")
        v = Validator()
        state = PageToken.decode(v, "cursor", request.cursor)
        after = state.get("s", 0)
        v.check(
            isinstance(after, int) and after >= 0, "cursor", "is not a cursor this service issued"
        )
        check_id(v, "message_id", request.message_id, required=False, max_len=36)
        v.raise_if_any()
        async for seq, event in self.mailbox.statuses(
            sender, int(after), request.message_id, request.follow
        ):
            event.cursor = PageToken.encode({"s": seq})
            yield event

    # --- limits ------------------------------------------------------------------------------

    async def UpdateMessagingLimits(
        self, request: delivery_pb2.UpdateMessagingLimitsRequest, context: Any
    ) -> delivery_pb2.UpdateMessagingLimitsResponse:
        caller = current_principal()
        if not caller.is_admin:
            raise PermissionDenied(message="only admin sets messaging limits")
        v = Validator()
        check_request_id(v, request.request_id)
        limits = request.limits
        check_id(v, "limits.business_id", limits.business_id)
        most = self.sending.limit_settings.max_messages_per_second
        v.check(
            1 <= limits.messages_per_second <= most,
            "limits.messages_per_second",
            f"must be 1..{most}",
        )
        check_enum(v, "limits.tier", limits.tier, Tier)
        v.raise_if_any()

        async def work(s: AsyncSession) -> delivery_pb2.UpdateMessagingLimitsResponse:
            await store.put_limits(
                s, limits.business_id, limits.messages_per_second, limits.tier, self.clock.now()
            )
            return delivery_pb2.UpdateMessagingLimitsResponse(limits=limits)

        return await self.idem.run(
            self.db,
            "UpdateMessagingLimits",
            request,
            delivery_pb2.UpdateMessagingLimitsResponse,
            work,
        )

    async def GetMessagingLimits(
        self, request: delivery_pb2.GetMessagingLimitsRequest, context: Any
    ) -> delivery_pb2.GetMessagingLimitsResponse:
        caller = current_principal()
        v = Validator()
        check_id(v, "business_id", request.business_id)
        v.raise_if_any()
        if not (caller.is_admin or caller == Principal("business", request.business_id)):
            raise PermissionDenied(message=f"{caller} may not read these limits")
        async with self.db.read() as s:
            limits = await load_limits(await s.connection(), request.business_id)
        return delivery_pb2.GetMessagingLimitsResponse(
            limits=delivery_pb2.MessagingLimits(
                business_id=request.business_id,
                messages_per_second=limits.messages_per_second,
                tier=limits.tier,  # type: ignore[arg-type]
            )
        )
