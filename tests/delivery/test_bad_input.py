"""Bad input on every RPC: the right code and field, and nothing changed."""

from __future__ import annotations

from typing import Any

import grpc

from bizmsg.delivery.v1 import delivery_pb2 as pb
from bizmsg.kit.testing import metadata_for
from tests.delivery.helpers import MARKETING, ProcStack, Stack, fails

INVALID = grpc.StatusCode.INVALID_ARGUMENT
DENIED = grpc.StatusCode.PERMISSION_DENIED
ENV = [pb.DeviceEnvelope(device_id="d1", ciphertext=b"x")]

CASES: list[tuple[str, Any, str, grpc.StatusCode, str]] = [
    (
        "PublishKeys",
        pb.PublishKeysRequest(
            request_id="r",
            device_id="d9",
            identity_key=b"1" * 32,
            signed_pre_key=pb.SignedPreKey(public_key=b"2" * 32, signature=b"3" * 64),
            country_code="DE",
        ),
        "user:bob",
        INVALID,
        "signed_pre_key.signature",
    ),
    (
        "PublishKeys",
        pb.PublishKeysRequest(request_id="r", device_id="d9", identity_key=b"1" * 31),
        "user:bob",
        INVALID,
        "identity_key",
    ),
    ("PublishKeys", pb.PublishKeysRequest(request_id="r", device_id=""), "admin", DENIED, ""),
    (
        "GetPreKeyBundle",
        pb.GetPreKeyBundleRequest(owner="nobody"),
        "business:acme",
        INVALID,
        "owner",
    ),
    ("GetPreKeyBundle", pb.GetPreKeyBundleRequest(owner="user:alice"), "user:bob", DENIED, ""),
    ("GetPreKeyCount", pb.GetPreKeyCountRequest(device_id=""), "user:alice", INVALID, "device_id"),
    (
        "SendMessage",
        pb.SendMessageRequest(
            request_id="r", recipient="user:alice", sender_device_id="d1", envelopes=ENV
        ),
        "business:acme",
        INVALID,
        "category",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            request_id="r",
            recipient="user:alice",
            category=MARKETING,
            sender_device_id="d1",
            envelopes=[pb.DeviceEnvelope(device_id="d1", ciphertext=b"x" * 70000)],
        ),
        "business:acme",
        INVALID,
        "envelopes[0].ciphertext",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            request_id="r",
            recipient="business:b2",
            category=MARKETING,
            sender_device_id="d1",
            envelopes=ENV,
        ),
        "business:acme",
        INVALID,
        "recipient",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            request_id="r",
            recipient="user:alice",
            category=3,
            sender_device_id="d1",
            envelopes=ENV,
            ttl={"seconds": 3600},
        ),
        "business:acme",
        INVALID,
        "ttl",
    ),
    (
        "SendMessage",
        pb.SendMessageRequest(
            request_id="", recipient="user:alice", category=MARKETING, sender_device_id="d1"
        ),
        "business:acme",
        INVALID,
        "request_id",
    ),
    (
        "AckMessages",
        pb.AckMessagesRequest(request_id="r", device_id="d1"),
        "user:alice",
        INVALID,
        "message_ids",
    ),
    (
        "MarkRead",
        pb.MarkReadRequest(request_id="r", message_ids=["a", "a"]),
        "user:alice",
        INVALID,
        "message_ids",
    ),
    (
        "UpdateMessagingLimits",
        pb.UpdateMessagingLimitsRequest(
            request_id="r",
            limits=pb.MessagingLimits(business_id="acme", messages_per_second=5000, tier=1),
        ),
        "admin",
        INVALID,
        "limits.messages_per_second",
    ),
    (
        "UpdateMessagingLimits",
        pb.UpdateMessagingLimitsRequest(
            request_id="r",
            limits=pb.MessagingLimits(business_id="acme", messages_per_second=10, tier=1),
        ),
        "business:acme",
        DENIED,
        "",
    ),
    (
        "GetMessagingLimits",
        pb.GetMessagingLimitsRequest(business_id="other"),
        "business:acme",
        DENIED,
        "",
    ),
]


TABLES = (
    "devices",
    "one_time_pre_keys",
    "messages",
    "envelopes",
    "business_limits",
    "idempotency_keys",
)


def test_bad_input_changes_nothing(procs: ProcStack, st: Stack) -> None:
    # The cases name "user:alice" and "business:acme"; their keys exist, nothing else.
    if not procs.count("devices", "owner = 'user:alice'"):
        st.person("alice", pre_keys=3)
    before = {t: procs.count(t) for t in TABLES}
    for method, request, principal, code, field in CASES:
        with fails(code) as d:
            getattr(st.delivery, method)(request, metadata=metadata_for(principal))
        if field:
            violations = d["BadRequest"].field_violations
            fields = [v.field for v in violations]
            assert field in fields, (method, fields)
            assert all(v.description for v in violations)
    for method, request in (
        ("ReceiveMessages", pb.ReceiveMessagesRequest(device_id="")),
        ("StreamStatuses", pb.StreamStatusesRequest(cursor="!!garbage!!")),
    ):
        with fails(INVALID) as d:
            list(getattr(st.delivery, method)(request, metadata=metadata_for("user:alice")))
        assert d["BadRequest"].field_violations
    after = {t: procs.count(t) for t in TABLES}
    assert after == before


def test_unauthenticated(st: Stack) -> None:
    for md in ([], [("authorization", "Bearer garbage")]):
        with fails(grpc.StatusCode.UNAUTHENTICATED):
            st.delivery.GetPreKeyCount(pb.GetPreKeyCountRequest(device_id="d1"), metadata=md)
