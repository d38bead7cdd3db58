"""Calls to consent and billing, with their failures turned into our own errors.

A dependency that cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED, an internal failure)
becomes our UNAVAILABLE with reason CONSENT_UNAVAILABLE / BILLING_UNAVAILABLE; billing's
RESOURCE_EXHAUSTED is the business's wallet (INSUFFICIENT_FUNDS); other refusals keep the
dependency's reason in the ErrorInfo metadata.

CheckConsent and AuthorizeCharge, made for every message, go as items on one long-lived stream
per dependency (CheckConsentStream, AuthorizeChargeStream; kit/multiplex.py), which fail with the
same grpc errors as the unary calls; BIZMSG_INTERNAL_STREAMS=0 makes them unary calls again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import grpc
from google.rpc import error_details_pb2

from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.kit import multiplex
from bizmsg.kit.errors import (
    DomainError,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    error_info,
    status_details,
)
from bizmsg.kit.multiplex import StreamClient
from bizmsg.kit.server import Runtime
from bizmsg.kit.timeutil import to_duration

# A dependency that failed with these did not answer, or not in time: not a refusal by its
# rules, and what the call did there is unknown.
UNREACHABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
}
# When billing gives no RetryInfo for an empty wallet: try again after a top-up.
FUNDS_RETRY_SECONDS = 60.0


@dataclass(frozen=True)
class ChargeRequest:
    """What delivery asks billing to authorize for one message; kept in the outbox when the
    answer was lost, so that the same request can be made again (see Dependencies.release)."""

    message_id: str  # the request_id: a repeat replays billing's answer
    business_id: str
    country: str
    category: int
    window_kind: int
    hold: timedelta

    def request(self) -> billing_pb2.AuthorizeChargeRequest:
        return billing_pb2.AuthorizeChargeRequest(
            request_id=self.message_id,
            business_id=self.business_id,
            recipient_country=self.country,
            category=self.category,  # type: ignore[arg-type]
            window=self.window_kind,  # type: ignore[arg-type]
            timeout=to_duration(self.hold),
        )

    def payload(self) -> dict[str, str]:
        return {
            "message_id": self.message_id,
            "business_id": self.business_id,
            "country": self.country,
            "category": str(self.category),
            "window_kind": str(self.window_kind),
            "hold_seconds": str(self.hold.total_seconds()),
        }

    @classmethod
    def from_payload(cls, p: dict[str, str]) -> ChargeRequest:
        return cls(
            message_id=p["message_id"],
            business_id=p["business_id"],
            country=p["country"],
            category=int(p["category"]),
            window_kind=int(p["window_kind"]),
            hold=timedelta(seconds=float(p["hold_seconds"])),
        )


def is_retryable(e: grpc.aio.AioRpcError) -> bool:
    """Whether an outbox call may land later (versus a final answer)."""
    return e.code() in UNREACHABLE or e.code() in {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    }


def _retry_after(e: grpc.aio.AioRpcError) -> float | None:
    for detail in status_details(e):
        if isinstance(detail, error_details_pb2.RetryInfo):
            return float(detail.retry_delay.ToTimedelta().total_seconds())
    return None


def dependency_error(service: str, e: grpc.aio.AioRpcError) -> DomainError:
    name = service.upper()
    if e.code() in UNREACHABLE:
        return Unavailable(
            f"{name}_UNAVAILABLE", f"the {service} service cannot be reached", retry_after=1.0
        )
    info = error_info(e)
    their_reason = info[0] if info else e.code().name
    metadata = {f"{service}_reason": their_reason}
    if service == "billing" and e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(
            "INSUFFICIENT_FUNDS",
            "the business's wallet cannot cover this message",
            quota_violations=[("wallet", e.details() or "insufficient funds")],
            retry_after=_retry_after(e) or FUNDS_RETRY_SECONDS,
            metadata=metadata,
        )
    return FailedPrecondition(
        f"{name}_REFUSED", f"the {service} service refused: {e.details()}", metadata=metadata
    )


CheckStream = StreamClient[consent_pb2.CheckConsentRequest, consent_pb2.CheckConsentResponse]
AuthorizeStream = StreamClient[
    billing_pb2.AuthorizeChargeRequest, billing_pb2.AuthorizeChargeResponse
]


class Dependencies:
    """Stubs made once on the runtime's channels; every method maps failures as above."""

    def __init__(self, runtime: Runtime) -> None:
        self.consent = consent_pb2_grpc.ConsentServiceStub(runtime.channel("consent"))
        self.billing = billing_pb2_grpc.BillingServiceStub(runtime.channel("billing"))
        # Typed here: the stubs' methods give mypy nothing to infer them from.
        self._checks: CheckStream | None = multiplex.open_for(
            runtime,
            "consent",
            self.consent.CheckConsentStream,
            consent_pb2.CheckConsentStreamItem,
            batch=consent_pb2.CheckConsentStreamRequest,
            unary=self.consent.CheckConsent,
        )
        self._authorizations: AuthorizeStream | None = multiplex.open_for(
            runtime,
            "billing",
            self.billing.AuthorizeChargeStream,
            billing_pb2.AuthorizeChargeStreamItem,
            batch=billing_pb2.AuthorizeChargeStreamRequest,
            unary=self.billing.AuthorizeCharge,
        )

    async def check_consent(
        self, business_id: str, person_id: str, category: int
    ) -> consent_pb2.CheckConsentResponse:
        req = consent_pb2.CheckConsentRequest(
            business_id=business_id,
            person_id=person_id,
            category=category,  # type: ignore[arg-type]
        )
        try:
            if self._checks is not None:
                return await self._checks.call(req)
            response: consent_pb2.CheckConsentResponse = await self.consent.CheckConsent(req)
            return response
        except grpc.aio.AioRpcError as e:
            raise dependency_error("consent", e) from e

    async def record_user_message(
        self, message_id: str, person_id: str, business_id: str, referral: common_pb2.Referral
    ) -> None:
        req = consent_pb2.RecordUserMessageRequest(
            request_id=message_id, person_id=person_id, business_id=business_id
        )
        if referral.click_id or referral.campaign_id:
            req.referral.CopyFrom(referral)
        try:
            await self.consent.RecordUserMessage(req)
        except grpc.aio.AioRpcError as e:
            raise dependency_error("consent", e) from e

    async def authorize(self, charge: ChargeRequest) -> billing_pb2.AuthorizeChargeResponse:
        req = charge.request()
        try:
            if self._authorizations is not None:
                return await self._authorizations.call(req)
            response: billing_pb2.AuthorizeChargeResponse = await self.billing.AuthorizeCharge(req)
            return response
        except grpc.aio.AioRpcError as e:
            raise dependency_error("billing", e) from e

    # The four below are the outbox's calls: they raise grpc errors for the relay to judge.

    async def release(self, charge: ChargeRequest) -> None:
        """Voids what an authorization whose outcome was unknown made, if anything: the same
        request replays billing's answer (or authorizes now). A refusal means nothing is held."""
        try:
            auth = await self.billing.AuthorizeCharge(charge.request())
        except grpc.aio.AioRpcError as e:
            if is_retryable(e) and e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise
            return  # refused by billing's rules (the wallet, say): no hold was made
        await self.void(
            f"void-{charge.message_id}", auth.authorization_id, billing_pb2.VOID_REASON_CANCELLED
        )

    async def capture(self, request_id: str, authorization_id: str) -> None:
        await self.billing.CaptureCharge(
            billing_pb2.CaptureChargeRequest(
                request_id=request_id, authorization_id=authorization_id
            )
        )

    async def void(self, request_id: str, authorization_id: str, reason: int) -> None:
        await self.billing.VoidCharge(
            billing_pb2.VoidChargeRequest(
                request_id=request_id,
                authorization_id=authorization_id,
                reason=reason,  # type: ignore[arg-type]
            )
        )

    async def record_business_reply(
        self, request_id: str, business_id: str, person_id: str
    ) -> None:
        await self.consent.RecordBusinessReply(
            consent_pb2.RecordBusinessReplyRequest(
                request_id=request_id, business_id=business_id, person_id=person_id
            )
        )
