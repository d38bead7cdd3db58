"""The permission matrix: each principal kind on each RPC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from tests.consent.conftest import Consent, rid, rpc_error

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


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_permission_matrix(consent: Consent, method: str) -> None:
    make, allowed = MATRIX[method]
    consent.grant("alice", "acme")  # so that reads of alice's data find something
    for principal in PRINCIPALS:
        if principal not in allowed:
            code, _ = rpc_error(consent.call, method, make(), principal)
            assert code == grpc.StatusCode.PERMISSION_DENIED, (method, principal)
    # Denied calls changed nothing: the history holds the one grant, the consent still holds.
    history = consent.call(
        "GetConsentHistory", pb.GetConsentHistoryRequest(person_id="alice"), "user:alice"
    )
    assert len(history.events) == 1
    assert consent.check("alice", "acme", c.CATEGORY_UTILITY).allowed
    for principal in sorted(allowed):
        consent.call(method, make(), principal)
        if method == "ErasePerson":
            consent.grant("alice", "acme")


def test_no_token_is_unauthenticated(consent: Consent) -> None:
    req = pb.CheckConsentRequest(business_id="acme", person_id="alice", category=1)
    code, _ = rpc_error(consent.stub.CheckConsent, req)
    assert code == grpc.StatusCode.UNAUTHENTICATED
