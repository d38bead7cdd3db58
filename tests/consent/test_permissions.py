"""The permission matrix: each principal kind on each RPC."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import grpc

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.kit.auth import Principal, TokenAuthority
from bizmsg.kit.testing import TEST_SECRET
from tests.consent.conftest import Consent, reason_of, rid, rpc_error

PRINCIPALS = [
    "user:alice",  # the person concerned
    "user:bob",  # another person
    "business:acme",  # the business concerned
    "business:other",
    "service:delivery",
    "service:ads",
    "service:billing",
    "advertiser:adco",
    "admin",
]

# RPC -> (request maker, principals allowed).
MATRIX: dict[str, tuple[Callable[[], Any], set[str]]] = {
    "GrantConsent": (
        lambda: pb.GrantConsentRequest(
            request_id=rid(),
            person_id="alice",
            business_id="acme",
            all_categories=True,
            collection_method=pb.COLLECTION_METHOD_API,
            notice=pb.Notice(text="n", locale="en"),
        ),
        {"user:alice"},
    ),
    "RevokeConsent": (
        lambda: pb.RevokeConsentRequest(
            request_id=rid(), person_id="alice", business_id="acme", all_categories=True
        ),
        {"user:alice"},
    ),
    "BlockBusiness": (
        lambda: pb.BlockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme"),
        {"user:alice"},
    ),
    "UnblockBusiness": (
        lambda: pb.UnblockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme"),
        {"user:alice"},
    ),
    "CheckConsent": (
        lambda: pb.CheckConsentRequest(
            business_id="acme", person_id="alice", category=c.CATEGORY_MARKETING
        ),
        {"business:acme", "service:delivery"},
    ),
    "RecordUserMessage": (
        lambda: pb.RecordUserMessageRequest(
            request_id=rid(), person_id="alice", business_id="acme"
        ),
        {"service:delivery"},
    ),
    "RecordBusinessReply": (
        lambda: pb.RecordBusinessReplyRequest(
            request_id=rid(), person_id="alice", business_id="acme"
        ),
        {"service:delivery"},
    ),
    "ListConsents": (lambda: pb.ListConsentsRequest(person_id="alice"), {"user:alice"}),
    "GetConsentHistory": (lambda: pb.GetConsentHistoryRequest(person_id="alice"), {"user:alice"}),
    "VerifyConsentHistory": (
        lambda: pb.VerifyConsentHistoryRequest(person_id="alice"),
        {"user:alice", "admin"},
    ),
    "ExportPersonData": (
        lambda: pb.ExportPersonDataRequest(person_id="alice"),
        {"user:alice", "admin"},
    ),
    "ErasePerson": (
        lambda: pb.ErasePersonRequest(request_id=rid(), person_id="alice"),
        {"user:alice", "admin"},
    ),
    "SetAdPreferences": (
        lambda: pb.SetAdPreferencesRequest(
            request_id=rid(), preferences=pb.AdPreferences(person_id="alice")
        ),
        {"user:alice"},
    ),
    "GetAdPreferences": (
        lambda: pb.GetAdPreferencesRequest(person_id="alice"),
        {"user:alice", "service:ads"},
    ),
    "GetReceiptKey": (pb.GetReceiptKeyRequest, set(PRINCIPALS)),
}


def _assert_nothing_changed(consent: Consent) -> None:
    """Alice's state is what the one grant in the test made: no denied call left a trace."""
    history = consent.call(
        "GetConsentHistory", pb.GetConsentHistoryRequest(person_id="alice"), "user:alice"
    )
    assert [e.event_type for e in history.events] == [pb.CONSENT_EVENT_TYPE_GRANTED]
    listed = consent.call("ListConsents", pb.ListConsentsRequest(person_id="alice"), "user:alice")
    assert [(r.version, r.blocked) for r in listed.consents] == [(1, False)]
    assert consent.check("alice", "acme", c.CATEGORY_UTILITY).allowed
    d = consent.check("alice", "acme", c.CATEGORY_SERVICE)
    assert not d.allowed and d.window.kind == c.WINDOW_KIND_NONE  # no window was opened
    prefs = consent.call(
        "GetAdPreferences", pb.GetAdPreferencesRequest(person_id="alice"), "user:alice"
    ).preferences
    assert not prefs.HasField("update_time")


# ErasePerson last: the allowed calls before it still find alice.
ORDER = sorted(MATRIX, key=lambda m: (m == "ErasePerson", m))


def test_permission_matrix(consent: Consent) -> None:
    """Every principal kind on every RPC: the denied get PERMISSION_DENIED and change nothing;
    the allowed succeed. One service for the whole matrix keeps the run short."""
    consent.grant("alice", "acme")
    assert set(PRINCIPALS) >= {p for _, allowed in MATRIX.values() for p in allowed}
    for method in ORDER:
        make, allowed = MATRIX[method]
        for principal in PRINCIPALS:
            if principal in allowed:
                continue
            code, details = rpc_error(consent.call, method, make(), principal)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, principal)
            assert reason_of(details) == "PERMISSION_DENIED", (method, principal)
    _assert_nothing_changed(consent)
    for method in ORDER:
        make, allowed = MATRIX[method]
        response_type = getattr(pb, f"{method}Response")
        for principal in sorted(allowed):
            assert isinstance(consent.call(method, make(), principal), response_type), (
                method,
                principal,
            )


def test_every_rpc_needs_a_valid_token(consent: Consent) -> None:
    consent.grant("alice", "acme")
    past = datetime.now(UTC) - timedelta(days=2)
    expired = TokenAuthority(TEST_SECRET.encode()).mint(
        Principal.parse("admin"), ttl=timedelta(hours=1), now=past
    )
    forged = TokenAuthority(b"x" * 32).mint(Principal.parse("admin"))  # another secret
    for method in ORDER:
        make, _ = MATRIX[method]
        for metadata in (
            None,
            [("authorization", f"Bearer {expired}")],
            [("authorization", f"Bearer {forged}")],
            [("authorization", "Bearer garbage")],
        ):
            call = partial(getattr(consent.stub, method), metadata=metadata, timeout=20)
            code, _ = rpc_error(call, make())
            assert code == grpc.StatusCode.UNAUTHENTICATED, (method, metadata)
    _assert_nothing_changed(consent)
