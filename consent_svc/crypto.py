"""The service's keys and the per-person encryption that makes erasure possible.

- `person_hash`: HMAC-SHA256 of the person_id under a service secret: rows are found by it and
  never hold the id itself.
- `seal`/`unseal`: AES-256-GCM under the person's own data key; deleting that key (erasure)
  leaves ciphertext nobody can read.
- `ReceiptSigner`: the Ed25519 key that signs consent receipts, persisted in the database so
  receipts verify across restarts and replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE = 12


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def person_hash(secret: bytes, person_id: str) -> str:
    return hmac.new(secret, person_id.encode(), hashlib.sha256).hexdigest()


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    return AESGCM(key).decrypt(sealed[:_NONCE], sealed[_NONCE:], aad)


class ReceiptSigner:
    def __init__(self, private_bytes: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(private_bytes)
        self.public_bytes = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = hashlib.sha256(self.public_bytes).hexdigest()[:16]
        self.public_pem = (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

    @staticmethod
    def generate() -> bytes:
        return Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)


def verify_signature(public_bytes: bytes, data: bytes, signature: bytes) -> bool:
    """Offline check of a receipt: what any holder of the public key can do."""
    try:
        Ed25519PublicKey.from_public_bytes(public_bytes).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
