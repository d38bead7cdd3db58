"""Key formats shared by the SDK and the delivery server's key directory.

Identity keys are Curve25519 public keys; signed prekeys are signed with XEdDSA by the
identity key, exactly as the `x3dh` package does it. The server imports
`verify_signed_pre_key` from here so both sides check the same bytes.
"""

from __future__ import annotations

import xeddsa
from x3dh import BaseState, IdentityKeyFormat

KEY_SIZE = 32
SIGNATURE_SIZE = 64
# Binds every key agreement to this application.
X3DH_INFO = b"bizmsg X3DH v1"


def encode_public_key(key_format: IdentityKeyFormat, pub: bytes) -> bytes:
    """Signal-style encoding: a type byte (0x05 Curve25519, 0x06 Ed25519) and the raw key."""
    prefix = b"\x05" if key_format is IdentityKeyFormat.CURVE_25519 else b"\x06"
    return prefix + pub


def verify_signed_pre_key(identity_key: bytes, signed_pre_key: bytes, signature: bytes) -> bool:
    """Whether `signature` is the identity key's XEdDSA signature of the signed prekey."""
    if (
        len(identity_key) != KEY_SIZE
        or len(signed_pre_key) != KEY_SIZE
        or len(signature) != SIGNATURE_SIZE
    ):
        return False
    try:
        ed_pub = xeddsa.curve25519_pub_to_ed25519_pub(identity_key, False)
        return bool(
            xeddsa.ed25519_verify(
                signature,
                ed_pub,
                encode_public_key(IdentityKeyFormat.CURVE_25519, signed_pre_key),
            )
        )
    except xeddsa.XEdDSAException:
        return False


class X3DHState(BaseState):  # type: ignore[misc]
    """The x3dh package's state with manual prekey management (the server hands prekeys out)."""

    @staticmethod
    def _encode_public_key(key_format: IdentityKeyFormat, pub: bytes) -> bytes:
        return encode_public_key(key_format, pub)
