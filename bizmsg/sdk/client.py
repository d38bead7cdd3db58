"""The client SDK's plain calls: keys, send, receive (decrypted), ack, mark read, statuses.

Only ciphertext leaves the client. The local store (a directory) keeps the device's keys and
sessions, so a restarted Client with the same directory goes on where it stopped. Server
refusals surface as grpc.RpcError (inspect .code() and the google.rpc details); decryption
problems as bizmsg.sdk.errors.DecryptionError subclasses.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from os import PathLike

import grpc
from x3dh import Bundle

from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.sdk.crypto import DeviceCrypto
from bizmsg.sdk.errors import DecryptionError, InvalidBundleError, NoDevicesError
from bizmsg.sdk.keys import verify_signed_pre_key
from bizmsg.sdk.store import LocalStore

_PENDING_PUBLISH = "pending_publish"


@dataclass(frozen=True)
class SendResult:
    message_id: str
    price: common_pb2.Money
    free: bool
    expire_time: datetime


@dataclass(frozen=True)
class ReceivedMessage:
    message_id: str
    sender: str
    sender_device_id: str
    plaintext: bytes
    category: int
    send_time: datetime
    referral: common_pb2.Referral | None


@dataclass(frozen=True)
class StatusEvent:
    cursor: str
    message_id: str
    recipient: str
    status: int
    event_time: datetime
    reason: str


class MessageDecryptionError(DecryptionError):
    """Raised by Client.receive: which message failed and why (the cause is chained)."""

    def __init__(self, message_id: str, sender: str, cause: DecryptionError) -> None:
        super().__init__(f"message {message_id} from {sender}: {cause}")
        self.message_id = message_id
        self.sender = sender
        self.cause = cause


def _new_request_id() -> str:
    return str(uuid.uuid4())


class Client:
    """One principal's device. `principal` is "business:<id>" or "user:<id>"."""

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        principal: str,
        device_id: str,
        token: str,
        store_dir: str | PathLike[str],
        country_code: str = "",
    ) -> None:
        self.principal = principal
        self.device_id = device_id
        self.country_code = country_code
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        self.store = LocalStore(store_dir)
        self.crypto = DeviceCrypto(self.store, principal, device_id)

    def close(self) -> None:
        self.store.close()

    # --- keys --------------------------------------------------------------------------------

    def publish_keys(self, one_time_pre_keys: int = 100) -> int:
        """Publishes identity, signed prekey and `one_time_pre_keys` new one-time prekeys.

        The new keys are remembered with their request id before the call, so a failed
        publish is retried with the same keys (never handing a key out twice)."""
        pending = self.store.get_meta(_PENDING_PUBLISH)
        if pending is None:
            with self.store.transaction():
                keys = self.crypto.generate_pre_keys(one_time_pre_keys)
                pending = json.dumps(
                    {"request_id": _new_request_id(), "keys": [k.hex() for k in keys]}
                )
                self.store.set_meta(_PENDING_PUBLISH, pending)
        batch = json.loads(pending)
        spk, sig = self.crypto.signed_pre_key
        response = self._stub.PublishKeys(
            delivery_pb2.PublishKeysRequest(
                request_id=batch["request_id"],
                device_id=self.device_id,
                identity_key=self.crypto.identity_key,
                signed_pre_key=delivery_pb2.SignedPreKey(public_key=spk, signature=sig),
                one_time_pre_keys=[bytes.fromhex(k) for k in batch["keys"]],
                country_code=self.country_code,
            ),
            metadata=self._metadata,
        )
        with self.store.transaction():
            self.store.delete_meta(_PENDING_PUBLISH)
        return int(response.one_time_pre_key_count)

    def pre_key_count(self) -> int:
        response = self._stub.GetPreKeyCount(
            delivery_pb2.GetPreKeyCountRequest(device_id=self.device_id), metadata=self._metadata
        )
        return int(response.one_time_pre_key_count)

    def refill_pre_keys(self, minimum: int = 20, target: int = 100) -> int:
        """Tops the server's one-time prekeys up to `target` when fewer than `minimum` are left."""
        count = self.pre_key_count()
        if count >= minimum:
            return count
        return self.publish_keys(target - count)

    def rotate_signed_pre_key(self) -> None:
        with self.store.transaction():
            self.crypto.rotate_signed_pre_key()
        self.publish_keys(0)

    def _fetch_bundles(self, recipient: str, category: int) -> dict[str, Bundle]:
        response = self._stub.GetPreKeyBundle(
            delivery_pb2.GetPreKeyBundleRequest(owner=recipient, category=category),  # type: ignore[arg-type]
            metadata=self._metadata,
        )
        out: dict[str, Bundle] = {}
        for b in response.bundles:
            spk = b.signed_pre_key
            if not verify_signed_pre_key(b.identity_key, spk.public_key, spk.signature):
                raise InvalidBundleError(f"{recipient}/{b.device_id}: bad signed prekey")
            pre_keys = frozenset([b.one_time_pre_key]) if b.one_time_pre_key else frozenset()
            out[b.device_id] = Bundle(b.identity_key, spk.public_key, spk.signature, pre_keys)
        return out

    # --- sending -----------------------------------------------------------------------------

    def send(
        self,
        recipient: str,
        plaintext: bytes,
        *,
        category: int = common_pb2.CATEGORY_UNSPECIFIED,
        request_id: str | None = None,
        ttl: timedelta | None = None,
        referral: common_pb2.Referral | None = None,
        refresh_devices: bool = False,
    ) -> SendResult:
        """Encrypts for every device of `recipient` and sends one message.

        `refresh_devices` fetches the recipient's bundles again: for devices added since,
        and after a FAILED status with reason RECIPIENT_DEVICE_RESET (a device re-registered
        with new keys; its session is started afresh).

        Retrying with the same request_id resends the very same ciphertext, so the server
        answers with the first result (one message, one charge)."""
        request_id = request_id or _new_request_id()
        stored = self.store.get_outgoing(request_id)
        if stored is not None:
            request = delivery_pb2.SendMessageRequest.FromString(stored)
        else:
            request = self._encrypt(
                recipient, plaintext, category, request_id, ttl, referral, refresh_devices
            )
        response = self._stub.SendMessage(request, metadata=self._metadata)
        return SendResult(
            message_id=response.message_id,
            price=response.price,
            free=response.free,
            expire_time=response.expire_time.ToDatetime(),
        )

    def _encrypt(
        self,
        recipient: str,
        plaintext: bytes,
        category: int,
        request_id: str,
        ttl: timedelta | None,
        referral: common_pb2.Referral | None,
        refresh_devices: bool,
    ) -> delivery_pb2.SendMessageRequest:
        devices = self.store.session_devices(recipient)
        bundles: dict[str, Bundle] = {}
        restart: set[str] = set()
        if refresh_devices or not devices:
            bundles = self._fetch_bundles(recipient, category)
            devices = sorted(bundles)
            # A device that re-registered (new identity key) cannot read the old session.
            restart = {
                d
                for d, b in bundles.items()
                if self.crypto.session_identity(recipient, d) not in (None, b.identity_key)
            }
        if not devices:
            raise NoDevicesError(f"{recipient} has published no keys")
        request = delivery_pb2.SendMessageRequest(
            request_id=request_id,
            recipient=recipient,
            category=category,  # type: ignore[arg-type]
            sender_device_id=self.device_id,
        )
        if ttl is not None:
            request.ttl.FromTimedelta(ttl)
        if referral is not None:
            request.referral.CopyFrom(referral)
        try:
            with self.store.transaction():
                for device_id in devices:
                    new_session = device_id in restart or not self.crypto.has_session(
                        recipient, device_id
                    )
                    ciphertext = self.crypto.encrypt(
                        recipient,
                        device_id,
                        plaintext,
                        bundles[device_id] if new_session else None,
                        restart=device_id in restart,
                    )
                    request.envelopes.append(
                        delivery_pb2.DeviceEnvelope(device_id=device_id, ciphertext=ciphertext)
                    )
                # Kept so that a retry sends identical bytes.
                self.store.put_outgoing(request_id, request.SerializeToString())
        except BaseException:
            self.crypto.reload()
            raise
        return request

    # --- receiving ---------------------------------------------------------------------------

    def receive(self, *, follow: bool = False) -> Iterator[ReceivedMessage]:
        """Decrypted messages waiting for this device, then (follow) those that arrive.

        A message that fails to decrypt raises MessageDecryptionError (its id is on the
        exception; ack it to drop it). A message decrypted before but not acknowledged comes
        back from the local store instead of being decrypted twice."""
        stream = self._stub.ReceiveMessages(
            delivery_pb2.ReceiveMessagesRequest(device_id=self.device_id, follow=follow),
            metadata=self._metadata,
        )
        try:
            for item in stream:
                yield self._open(item)
        finally:
            stream.cancel()

    def _open(self, item: delivery_pb2.ReceiveMessagesResponse) -> ReceivedMessage:
        plaintext = self.store.get_received(item.message_id)
        if plaintext is None:
            try:
                with self.store.transaction():
                    plaintext = self.crypto.decrypt(
                        item.sender, item.sender_device_id, item.ciphertext
                    )
                    self.store.put_received(item.message_id, plaintext)
            except DecryptionError as e:
                self.crypto.reload()
                raise MessageDecryptionError(item.message_id, item.sender, e) from e
            except BaseException:
                self.crypto.reload()
                raise
        return ReceivedMessage(
            message_id=item.message_id,
            sender=item.sender,
            sender_device_id=item.sender_device_id,
            plaintext=plaintext,
            category=item.category,
            send_time=item.send_time.ToDatetime(),
            referral=item.referral if item.HasField("referral") else None,
        )

    def ack(self, message_ids: list[str], *, request_id: str | None = None) -> int:
        response = self._stub.AckMessages(
            delivery_pb2.AckMessagesRequest(
                request_id=request_id or _new_request_id(),
                device_id=self.device_id,
                message_ids=message_ids,
            ),
            metadata=self._metadata,
        )
        with self.store.transaction():
            self.store.forget_received(message_ids)
        return int(response.acknowledged_count)

    def mark_read(self, message_ids: list[str], *, request_id: str | None = None) -> int:
        response = self._stub.MarkRead(
            delivery_pb2.MarkReadRequest(
                request_id=request_id or _new_request_id(), message_ids=message_ids
            ),
            metadata=self._metadata,
        )
        return int(response.read_count)

    def follow_statuses(
        self, *, cursor: str = "", follow: bool = False, message_id: str = ""
    ) -> Iterator[StatusEvent]:
        """Status events of this principal's sent messages after `cursor` (resumable)."""
        stream = self._stub.StreamStatuses(
            delivery_pb2.StreamStatusesRequest(cursor=cursor, follow=follow, message_id=message_id),
            metadata=self._metadata,
        )
        try:
            for e in stream:
                yield StatusEvent(
                    cursor=e.cursor,
                    message_id=e.message_id,
                    recipient=e.recipient,
                    status=e.status,
                    event_time=e.event_time.ToDatetime(),
                    reason=e.reason,
                )
        finally:
            stream.cancel()
