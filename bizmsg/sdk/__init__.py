"""bizmsg client SDK: end-to-end encryption (X3DH + Double Ratchet) and plain calls."""

from bizmsg.sdk.client import (
    Client,
    MessageDecryptionError,
    ReceivedMessage,
    SendResult,
    StatusEvent,
)
from bizmsg.sdk.errors import (
    DecryptionError,
    InvalidBundleError,
    MalformedEnvelopeError,
    NoDevicesError,
    NoSessionError,
    ReplayedMessageError,
    SdkError,
    TamperedMessageError,
)

__all__ = [
    "Client",
    "DecryptionError",
    "InvalidBundleError",
    "MalformedEnvelopeError",
    "MessageDecryptionError",
    "NoDevicesError",
    "NoSessionError",
    "ReceivedMessage",
    "ReplayedMessageError",
    "SdkError",
    "SendResult",
    "StatusEvent",
    "TamperedMessageError",
]
