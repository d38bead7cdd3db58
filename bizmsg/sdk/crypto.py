"""End-to-end encryption for one device: X3DH to start a session, Double Ratchet after.

Built on the `x3dh` and `doubleratchet` packages (on `cryptography`) with the algorithms the
Signal specifications recommend: X25519, HKDF/HMAC-SHA-256, AES-256-CBC + HMAC-SHA-256.
The session's associated data binds both identity keys and both principals and devices, so
an envelope re-addressed by the server to someone else fails authentication.

Methods here change the local store but do not commit: the client wraps each call in one
store transaction together with what it records about the message.
"""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any, TypeVar

from doubleratchet import (
    AuthenticationFailedException,
    DecryptionFailedException,
    DoSProtectionException,
    DoubleRatchet,
    DuplicateMessageException,
)
from doubleratchet import Header as RatchetHeader
from doubleratchet.recommended import (
    aead_aes_hmac,
    diffie_hellman_ratchet_curve25519,
    kdf_hkdf,
    kdf_separate_hmacs,
)
from doubleratchet.recommended.crypto_provider import HashFunction as RatchetHash
from x3dh import Bundle, HashFunction, IdentityKeyFormat, KeyAgreementException
from x3dh import Header as X3DHHeader

from bizmsg.sdk.envelope import Envelope, decode, encode
from bizmsg.sdk.errors import (
    DecryptionError,
    InvalidBundleError,
    NoSessionError,
    ReplayedMessageError,
    TamperedMessageError,
)
from bizmsg.sdk.keys import X3DH_INFO, X3DHState
from bizmsg.sdk.store import LocalStore, SessionRecord

T = TypeVar("T")

_MESSAGE_CHAIN_CONSTANT = b"\x01\x02"
# Messages that may be skipped (lost or out of order) in a chain before decryption refuses.
_DOS_THRESHOLD = 1000
_MAX_SKIPPED_KEYS = 1000
_STATE_KEY = "x3dh_state"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Drive one of the crypto libraries' coroutines to the end without an event loop.

    They are declared async but never wait on anything, so the SDK stays usable from plain
    code and from inside a running loop alike.
    """
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("a crypto coroutine tried to suspend")


class _Aead(aead_aes_hmac.AEAD):  # type: ignore[misc]
    @staticmethod
    def _get_hash_function() -> RatchetHash:
        return RatchetHash.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return b"bizmsg message keys"


class _RootKdf(kdf_hkdf.KDF):  # type: ignore[misc]
    @staticmethod
    def _get_hash_function() -> RatchetHash:
        return RatchetHash.SHA_256

    @staticmethod
    def _get_info() -> bytes:
        return b"bizmsg root chain"


class _MessageKdf(kdf_separate_hmacs.KDF):  # type: ignore[misc]
    @staticmethod
    def _get_hash_function() -> RatchetHash:
        return RatchetHash.SHA_256


class _DiffieHellmanRatchet(diffie_hellman_ratchet_curve25519.DiffieHellmanRatchet):  # type: ignore[misc]
    pass


class _Ratchet(DoubleRatchet):  # type: ignore[misc]
    @staticmethod
    def _build_associated_data(associated_data: bytes, header: RatchetHeader) -> bytes:
        # The ratchet header is authenticated with every message.
        return (
            associated_data
            + header.ratchet_pub
            + header.previous_sending_chain_length.to_bytes(4, "big")
            + header.sending_chain_length.to_bytes(4, "big")
        )


_RATCHET_CONFIG: dict[str, Any] = {
    "diffie_hellman_ratchet_class": _DiffieHellmanRatchet,
    "root_chain_kdf": _RootKdf,
    "message_chain_kdf": _MessageKdf,
    "message_chain_constant": _MESSAGE_CHAIN_CONSTANT,
    "dos_protection_threshold": _DOS_THRESHOLD,
    "max_num_skipped_message_keys": _MAX_SKIPPED_KEYS,
    "aead": _Aead,
}


def _ratchet_from_json(state: dict[str, Any]) -> Any:
    return _Ratchet.from_json(state, **_RATCHET_CONFIG)


def _ratchet_json(ratchet: Any) -> dict[str, Any]:
    return dict(ratchet.json)


def _header_to_json(h: X3DHHeader) -> dict[str, str | None]:
    return {
        "identity_key": h.identity_key.hex(),
        "ephemeral_key": h.ephemeral_key.hex(),
        "signed_pre_key": h.signed_pre_key.hex(),
        "pre_key": None if h.pre_key is None else h.pre_key.hex(),
    }


def _header_from_json(d: dict[str, str | None]) -> X3DHHeader:
    def b(key: str) -> bytes:
        value = d[key]
        assert value is not None
        return bytes.fromhex(value)

    return X3DHHeader(
        b("identity_key"),
        b("ephemeral_key"),
        b("signed_pre_key"),
        None if d["pre_key"] is None else b("pre_key"),
    )


def _binding(initiator: str, initiator_device: str, responder: str, responder_device: str) -> bytes:
    return "|".join((initiator, initiator_device, responder, responder_device)).encode()


_RATCHET_KEYS_KEPT = 64


def _remember_ratchet_key(record: SessionRecord, key: bytes) -> None:
    k = key.hex()
    if k not in record.peer_ratchet_keys:
        record.peer_ratchet_keys = [*record.peer_ratchet_keys, k][-_RATCHET_KEYS_KEPT:]


class DeviceCrypto:
    """One device's keys and sessions, kept in its LocalStore."""

    def __init__(self, store: LocalStore, principal: str, device_id: str) -> None:
        self.store = store
        self.principal = principal
        self.device_id = device_id
        self.state = self._load()

    def _load(self) -> X3DHState:
        raw = self.store.get_meta(_STATE_KEY)
        if raw is not None:
            state, _ = X3DHState.from_json(
                json.loads(raw), IdentityKeyFormat.CURVE_25519, HashFunction.SHA_256, X3DH_INFO
            )
            return state
        state = X3DHState.create(IdentityKeyFormat.CURVE_25519, HashFunction.SHA_256, X3DH_INFO)
        self.store.set_meta(_STATE_KEY, json.dumps(state.json))
        return state

    def reload(self) -> None:
        """Forget in-memory changes after a rolled-back store transaction."""
        self.state = self._load()

    def _save(self) -> None:
        self.store.set_meta(_STATE_KEY, json.dumps(self.state.json))

    @property
    def identity_key(self) -> bytes:
        return bytes(self.state.bundle.identity_key)

    @property
    def signed_pre_key(self) -> tuple[bytes, bytes]:
        b = self.state.bundle
        return bytes(b.signed_pre_key), bytes(b.signed_pre_key_sig)

    def generate_pre_keys(self, count: int) -> list[bytes]:
        """Make `count` new one-time prekeys; returns their public keys."""
        before = set(self.state.bundle.pre_keys)
        self.state.generate_pre_keys(count)
        self._save()
        return sorted(set(self.state.bundle.pre_keys) - before)

    def rotate_signed_pre_key(self) -> None:
        """New signed prekey; the previous one still opens sessions started against it."""
        self.state.rotate_signed_pre_key()
        self._save()

    def has_session(self, peer: str, peer_device: str) -> bool:
        return self.store.get_session(peer, peer_device) is not None

    def session_identity(self, peer: str, peer_device: str) -> bytes | None:
        """The identity key the session with this peer device was made with, if any."""
        record = self.store.get_session(peer, peer_device)
        return None if record is None else record.peer_identity_key

    def encrypt(
        self,
        peer: str,
        peer_device: str,
        plaintext: bytes,
        bundle: Bundle | None = None,
        *,
        restart: bool = False,
    ) -> bytes:
        """Ciphertext for one peer device; starts a session from `bundle` when there is none
        (or, with `restart`, in place of the existing one)."""
        record = None if restart else self.store.get_session(peer, peer_device)
        if record is None:
            if bundle is None:
                raise NoSessionError(f"no session with {peer}/{peer_device} and no bundle")
            binding = _binding(self.principal, self.device_id, peer, peer_device)
            try:
                shared, ad, header = run_sync(
                    self.state.get_shared_secret_active(bundle, binding, require_pre_key=False)
                )
            except KeyAgreementException as e:
                raise InvalidBundleError(f"bundle of {peer}/{peer_device}: {e}") from e
            ratchet, message = run_sync(
                _Ratchet.encrypt_initial_message(
                    shared_secret=shared,
                    recipient_ratchet_pub=bundle.signed_pre_key,
                    message=plaintext,
                    associated_data=ad,
                    **_RATCHET_CONFIG,
                )
            )
            record = SessionRecord(
                ratchet=_ratchet_json(ratchet),
                associated_data=ad,
                ephemeral_key=header.ephemeral_key,
                peer_identity_key=bundle.identity_key,
                pending_x3dh=_header_to_json(header),
            )
        else:
            ratchet = _ratchet_from_json(record.ratchet)
            message = run_sync(ratchet.encrypt_message(plaintext, record.associated_data))
            record.ratchet = _ratchet_json(ratchet)
        self.store.put_session(peer, peer_device, record)
        pending = None if record.pending_x3dh is None else _header_from_json(record.pending_x3dh)
        return encode(Envelope(message, pending))

    def decrypt(self, peer: str, peer_device: str, data: bytes) -> bytes:
        """Plaintext of an envelope from a peer device, or a DecryptionError subclass."""
        envelope = decode(data)
        record = self.store.get_session(peer, peer_device)
        if envelope.x3dh is not None and (
            record is None or record.ephemeral_key != envelope.x3dh.ephemeral_key
        ):
            return self._decrypt_first(peer, peer_device, envelope)
        if record is None:
            raise NoSessionError(f"no session with {peer}/{peer_device}")
        ratchet = _ratchet_from_json(record.ratchet)
        try:
            plaintext: bytes = run_sync(
                ratchet.decrypt_message(envelope.message, record.associated_data)
            )
        except DuplicateMessageException as e:
            raise ReplayedMessageError(f"envelope from {peer}/{peer_device} seen before") from e
        except (
            AuthenticationFailedException,
            DecryptionFailedException,
            DoSProtectionException,
        ) as e:
            if envelope.message.header.ratchet_pub.hex() in record.peer_ratchet_keys:
                # A message on an older chain that is still missing would have had its key
                # kept; failing here means it was decrypted already.
                raise ReplayedMessageError(f"envelope from {peer}/{peer_device} seen before") from e
            raise TamperedMessageError(f"envelope from {peer}/{peer_device}: {e}") from e
        record.ratchet = _ratchet_json(ratchet)
        _remember_ratchet_key(record, envelope.message.header.ratchet_pub)
        # The peer has the session now: no need to send the X3DH header any more.
        record.pending_x3dh = None
        self.store.put_session(peer, peer_device, record)
        return plaintext

    def _decrypt_first(self, peer: str, peer_device: str, envelope: Envelope) -> bytes:
        header = envelope.x3dh
        assert header is not None
        if self.store.ephemeral_key_seen(header.ephemeral_key):
            # A session once started with this key: the envelope is a replay.
            raise ReplayedMessageError(f"session start from {peer}/{peer_device} seen before")
        binding = _binding(peer, peer_device, self.principal, self.device_id)
        try:
            shared, ad, spk = run_sync(
                self.state.get_shared_secret_passive(header, binding, require_pre_key=False)
            )
        except KeyAgreementException as e:
            raise DecryptionError(f"cannot start a session with {peer}/{peer_device}: {e}") from e
        try:
            ratchet, plaintext = run_sync(
                _Ratchet.decrypt_initial_message(
                    shared_secret=shared,
                    own_ratchet_priv=spk.priv,
                    message=envelope.message,
                    associated_data=ad,
                    **_RATCHET_CONFIG,
                )
            )
        except (
            AuthenticationFailedException,
            DecryptionFailedException,
            DoSProtectionException,
        ) as e:
            raise TamperedMessageError(f"envelope from {peer}/{peer_device}: {e}") from e
        if header.pre_key is not None:
            # Forward secrecy: a one-time prekey opens one session only.
            self.state.delete_pre_key(header.pre_key)
            self._save()
        self.store.add_ephemeral_key(header.ephemeral_key)
        record = SessionRecord(
            ratchet=_ratchet_json(ratchet),
            associated_data=ad,
            ephemeral_key=header.ephemeral_key,
            peer_identity_key=header.identity_key,
            pending_x3dh=None,
        )
        _remember_ratchet_key(record, envelope.message.header.ratchet_pub)
        self.store.put_session(peer, peer_device, record)
        return bytes(plaintext)
