"""The SDK's envelope wire format: what the server stores and relays as opaque bytes.

    version (1 byte, 0x01) | kind (1 byte)
    kind 0x01 (starts or continues a session the sender began, until the peer answers):
        identity_key (32) | ephemeral_key (32) | signed_pre_key (32)
        | has_pre_key (1) | pre_key (32, if set)
    ratchet_pub (32) | previous_chain_length (u32 BE) | chain_length (u32 BE)
    ciphertext (the rest: AES-256-CBC + HMAC-SHA-256, doubleratchet's recommended AEAD)

Every header field is authenticated: the X3DH fields feed the shared secret and the ratchet
header is part of the associated data of each message.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from doubleratchet import EncryptedMessage
from doubleratchet import Header as RatchetHeader
from x3dh import Header as X3DHHeader

from bizmsg.sdk.errors import MalformedEnvelopeError
from bizmsg.sdk.keys import KEY_SIZE

VERSION = 1
KIND_MESSAGE = 0
KIND_PRE_KEY = 1
_COUNTS = struct.Struct(">II")


@dataclass(frozen=True)
class Envelope:
    message: EncryptedMessage
    # Set while the sender has not heard back from the peer: lets the first envelope that
    # arrives start the session, whichever of them it is.
    x3dh: X3DHHeader | None = None


def encode(envelope: Envelope) -> bytes:
    parts = [bytes([VERSION, KIND_MESSAGE if envelope.x3dh is None else KIND_PRE_KEY])]
    if envelope.x3dh is not None:
        h = envelope.x3dh
        parts += [h.identity_key, h.ephemeral_key, h.signed_pre_key]
        parts.append(b"\x00" if h.pre_key is None else b"\x01" + h.pre_key)
    header = envelope.message.header
    parts += [
        header.ratchet_pub,
        _COUNTS.pack(header.previous_sending_chain_length, header.sending_chain_length),
        envelope.message.ciphertext,
    ]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise MalformedEnvelopeError("envelope is truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def rest(self) -> bytes:
        return self.data[self.pos :]


def decode(data: bytes) -> Envelope:
    r = _Reader(data)
    version, kind = r.take(2)
    if version != VERSION:
        raise MalformedEnvelopeError(f"unknown envelope version {version}")
    if kind not in (KIND_MESSAGE, KIND_PRE_KEY):
        raise MalformedEnvelopeError(f"unknown envelope kind {kind}")
    x3dh: X3DHHeader | None = None
    if kind == KIND_PRE_KEY:
        identity_key, ephemeral_key, signed_pre_key = (r.take(KEY_SIZE) for _ in range(3))
        flag = r.take(1)
        if flag not in (b"\x00", b"\x01"):
            raise MalformedEnvelopeError("bad pre key flag")
        pre_key = r.take(KEY_SIZE) if flag == b"\x01" else None
        x3dh = X3DHHeader(identity_key, ephemeral_key, signed_pre_key, pre_key)
    ratchet_pub = r.take(KEY_SIZE)
    previous, length = _COUNTS.unpack(r.take(_COUNTS.size))
    ciphertext = r.rest()
    if not ciphertext:
        raise MalformedEnvelopeError("envelope has no ciphertext")
    return Envelope(
        EncryptedMessage(RatchetHeader(ratchet_pub, previous, length), ciphertext), x3dh
    )
