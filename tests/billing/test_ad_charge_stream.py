"""ChargeAdEventStream answers each item as a ChargeAdEvent call would: the same charge,
replay, refusal and permission. (The stream mechanism itself: tests/kit/test_multiplex.py.)"""

from __future__ import annotations

import grpc

from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.kit import multiplex
from bizmsg.kit.testing import error_details
from tests.billing.support import ADS, DELIVERY, Billing, eur, metadata_for, rid


def _charge(account_id: str, micros: int, request_id: str = "") -> pb.ChargeAdEventRequest:
    return pb.ChargeAdEventRequest(
        request_id=request_id or rid("evt"),
        campaign_id="camp",
        account_id=account_id,
        kind=pb.AD_EVENT_KIND_IMPRESSION,
        amount=eur(micros),
    )


def _on_stream(
    billing: Billing, request: pb.ChargeAdEventRequest, principal: str = ADS
) -> pb.ChargeAdEventStreamAnswer:
    """One item on a stream of its own (one at a time: the order of the charges is the test's)."""
    items = iter(
        [
            pb.ChargeAdEventStreamRequest(
                items=[pb.ChargeAdEventStreamItem(correlation_id=7, request=request)]
            )
        ]
    )
    responses = billing.stub.ChargeAdEventStream(
        items, metadata=metadata_for(principal), timeout=30
    )
    answers = [a for r in responses for a in r.answers]
    assert [a.correlation_id for a in answers] == [7]
    return answers[0]


def _error(answer: pb.ChargeAdEventStreamAnswer) -> grpc.RpcError:
    """The answer's error as the unary call would have raised it."""
    assert answer.WhichOneof("result") == "error"
    return multiplex.error_from_status(answer.error)


def test_each_item_is_answered_as_the_unary_call(billing: Billing) -> None:
    wallet = billing.advertiser("streamed")
    billing.top_up(wallet.account_id, 10_000)

    first = _charge(wallet.account_id, 6_000)
    posted = _on_stream(billing, first)
    assert posted.response.amount == eur(6_000) and posted.response.transfer_id
    # The same request_id replays the answer, on the stream or not; nothing is charged twice.
    assert _on_stream(billing, first).response == posted.response
    assert billing.call(ADS, "ChargeAdEvent", first) == posted.response
    assert billing.account(wallet.account_id).debits_posted.amount_micros == 6_000

    # A charge the wallet cannot pay: the unary call's status, in the answer.
    refused = _error(_on_stream(billing, _charge(wallet.account_id, 6_000)))
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_details(refused)["ErrorInfo"].reason == "INSUFFICIENT_FUNDS"
    # Only ads may charge ad events, item by item as call by call.
    denied = _error(_on_stream(billing, _charge(wallet.account_id, 1), principal=DELIVERY))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    assert billing.account(wallet.account_id).debits_posted.amount_micros == 6_000
