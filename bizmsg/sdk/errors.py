"""Exceptions the client SDK raises; callers catch these, never the crypto libraries' own."""

from __future__ import annotations


class SdkError(Exception):
    """Base of every error the SDK raises itself."""


class DecryptionError(SdkError):
    """An incoming envelope could not be decrypted and was not accepted."""


class TamperedMessageError(DecryptionError):
    """The envelope failed authentication: it was altered, truncated or made for someone else."""


class ReplayedMessageError(DecryptionError):
    """The envelope was already decrypted once (a replay or a duplicate delivery)."""


class MalformedEnvelopeError(DecryptionError):
    """The envelope bytes do not follow the SDK's wire format."""


class NoSessionError(DecryptionError):
    """No session with the sender exists and the envelope does not start one."""


class NoDevicesError(SdkError):
    """The recipient has published no keys, so nothing can be encrypted for them."""


class InvalidBundleError(SdkError):
    """A prekey bundle from the server failed verification (bad signed-prekey signature)."""
