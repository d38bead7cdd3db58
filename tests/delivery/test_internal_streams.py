"""Delivery checks consent and authorizes the charge of every message as items on one
long-lived stream per dependency (CheckConsentStream, AuthorizeChargeStream). The real
consent and billing services serve each item exactly as the unary call: same permissions,
validation, idempotency and errors, one log line each under the unary method's name."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import status_pb2
from grpc_status import rpc_status

from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2
from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.errors import error_info
from bizmsg.kit.testing import TEST_SECRET, metadata_for
from tests.delivery.helpers import MARKETING, ProcStack, Stack, rid, uid, wait_until

CONSENT = "/bizmsg.consent.v1.ConsentService/"
BILLING = "/bizmsg.billing.v1.BillingService/"


def rpc_lines(procs: ProcStack, service: str, method: str) -> list[dict[str, Any]]:
    lines = []
    for raw in procs.procs[service].log_path.read_bytes().splitlines():
        if b'"rpc"' in raw:
            entry = json.loads(raw)
            if entry.get("message") == "rpc" and entry.get("method") == method:
                lines.append(entry)
    return lines


def _timeout(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromSeconds(int(seconds))
    return d


def check_item(request: consent_pb2.CheckConsentRequest) -> consent_pb2.CheckConsentStreamRequest:
    item = consent_pb2.CheckConsentStreamItem(
        correlation_id=1, caller_request_id=rid("t"), timeout=_timeout(10), request=request
    )
    return consent_pb2.CheckConsentStreamRequest(items=[item])


def authorize_item(
    request: billing_pb2.AuthorizeChargeRequest,
) -> billing_pb2.AuthorizeChargeStreamRequest:
    item = billing_pb2.AuthorizeChargeStreamItem(
        correlation_id=1, caller_request_id=rid("t"), timeout=_timeout(10), request=request
    )
    return billing_pb2.AuthorizeChargeStreamRequest(items=[item])


def one_answer(stream: Iterator[Any]) -> Any:
    (answer,) = [a for message in stream for a in message.answers]
    assert answer.correlation_id == 1
    return answer


def item_status(answer: Any) -> status_pb2.Status:
    assert answer.HasField("error"), answer
    status = status_pb2.Status()
    answer.error.Unpack(status)
    return status


def unary_status(call: Any, *args: Any, **kwargs: Any) -> status_pb2.Status:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kwargs)
    status = rpc_status.from_call(e.value)
    assert status is not None
    return status


def test_every_message_is_checked_and_charged_over_the_streams(procs: ProcStack, st: Stack) -> None:
    shop, person = uid("shop"), uid("ann")
    st.fund(shop, 1_000_000)
    st.grant(person, shop, MARKETING)
    st.bare_device(f"user:{person}")
    trace = rid("trace")
    st.delivery.SendMessage(
        st.raw_send_request(f"user:{person}", MARKETING),
        metadata=[*metadata_for(f"business:{shop}"), ("x-request-id", trace)],
    )
    for service, method in (("consent", "CheckConsent"), ("billing", "AuthorizeCharge")):
        prefix = CONSENT if service == "consent" else BILLING

        def logged(service: str = service, path: str = prefix + method) -> list[dict[str, Any]]:
            return [e for e in rpc_lines(procs, service, path) if e["request_id"] == trace]

        (line,) = wait_until(logged, timeout=10)
        assert line["code"] == "OK"
        assert line["principal"] == "service:delivery"
        assert line["stream"] == f"{prefix}{method}Stream"


@pytest.mark.parametrize("principal", ["user:someone", "business:other", "service:ads"])
def test_consent_refuses_an_item_as_it_refuses_the_call(st: Stack, principal: str) -> None:
    request = consent_pb2.CheckConsentRequest(
        business_id=uid("shop"), person_id=uid("p"), category=MARKETING
    )
    md = metadata_for(principal)
    unary = unary_status(st.consent.CheckConsent, request, metadata=md)
    item = item_status(
        one_answer(st.consent.CheckConsentStream(iter([check_item(request)]), metadata=md))
    )
    assert unary.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert item == unary


def test_a_business_checks_its_own_consent_over_a_stream(st: Stack) -> None:
    shop, person = uid("shop"), uid("bo")
    st.grant(person, shop, MARKETING)
    request = consent_pb2.CheckConsentRequest(
        business_id=shop, person_id=person, category=MARKETING
    )
    md = metadata_for(f"business:{shop}")
    answer = one_answer(st.consent.CheckConsentStream(iter([check_item(request)]), metadata=md))
    assert answer.response == st.consent.CheckConsent(request, metadata=md)
    assert answer.response.allowed


@pytest.mark.parametrize("principal", ["business:shop", "service:ads", "admin"])
def test_billing_authorizes_only_for_delivery_on_the_stream_too(st: Stack, principal: str) -> None:
    request = billing_pb2.AuthorizeChargeRequest(
        request_id=rid("m"),
        business_id=uid("shop"),
        recipient_country="DE",
        category=MARKETING,  # type: ignore[arg-type]
    )
    md = metadata_for(principal)
    unary = unary_status(st.billing.AuthorizeCharge, request, metadata=md)
    stream = st.billing.AuthorizeChargeStream(iter([authorize_item(request)]), metadata=md)
    item = item_status(one_answer(stream))
    assert unary.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert item == unary


def test_billing_items_keep_validation_and_idempotency(st: Stack) -> None:
    md = metadata_for("service:delivery")
    bad = billing_pb2.AuthorizeChargeRequest(request_id=rid("m"), recipient_country="DE")
    unary = unary_status(st.billing.AuthorizeCharge, bad, metadata=md)
    stream = st.billing.AuthorizeChargeStream(iter([authorize_item(bad)]), metadata=md)
    assert item_status(one_answer(stream)) == unary
    assert unary.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

    shop = uid("shop")
    st.fund(shop, 1_000_000)
    request = billing_pb2.AuthorizeChargeRequest(
        request_id=rid("m"),
        business_id=shop,
        recipient_country="DE",
        category=MARKETING,  # type: ignore[arg-type]
        window=common_pb2.WINDOW_KIND_NONE,
    )
    first = st.billing.AuthorizeCharge(request, metadata=md)
    stream = st.billing.AuthorizeChargeStream(iter([authorize_item(request)]), metadata=md)
    assert one_answer(stream).response == first  # a retry, answered from the first
    assert first.price.amount_micros > 0
    assert st.money(shop) == (first.price.amount_micros, 0)  # reserved once


@pytest.mark.parametrize("service", ["consent", "billing"])
def test_an_unauthenticated_stream_is_refused(st: Stack, service: str) -> None:
    # No item is written: the refusal comes when the stream opens, and a write racing it can
    # turn it into INTERNAL in gRPC (which is why StreamClient waits for the accept marker).
    def open_stream(md: list[tuple[str, str]]) -> Iterator[Any]:
        if service == "consent":
            return st.consent.CheckConsentStream(iter([]), metadata=md)  # type: ignore[no-any-return]
        return st.billing.AuthorizeChargeStream(iter([]), metadata=md)  # type: ignore[no-any-return]

    expired = TokenAuthority(TEST_SECRET.encode()).mint(
        "service:delivery", ttl=timedelta(seconds=-60)
    )
    for md, reason in (
        ([], "TOKEN_MISSING"),
        ([("authorization", f"Bearer {expired}")], "TOKEN_EXPIRED"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            list(open_stream(md))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(e.value) == (reason, {})
