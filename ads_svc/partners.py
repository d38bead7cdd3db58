"""Calls to consent (the ad preference) and billing (charges and funds)."""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.kit import multiplex
from bizmsg.kit.errors import InvalidArgument, PermissionDenied, Unavailable
from bizmsg.kit.multiplex import StreamClient
from bizmsg.kit.server import Runtime

log = logging.getLogger("ads_svc.partners")

# Billing's answers that are final: the charge did not happen and will not.
_REFUSALS = frozenset(
    {
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
    }
)


class Charge(enum.Enum):
    POSTED = "POSTED"
    REFUSED = "REFUSED"
    # Billing did not answer: the charge may or may not have been posted. It is retried
    # with the same request_id (billing is idempotent on it) until the answer is final.
    UNKNOWN = "UNKNOWN"


@dataclass(frozen=True)
class Preferences:
    personalised: bool
    interests: Sequence[str]


class Consent:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = consent_pb2_grpc.ConsentServiceStub(channel)

    async def ad_preferences(self, person_id: str) -> Preferences:
        """The person's preference. If consent cannot answer, personalisation is off:
        that is the default, so serving context-only ads is always allowed."""
        try:
            resp = await self._stub.GetAdPreferences(
                consent_pb2.GetAdPreferencesRequest(person_id=person_id)
            )
        except grpc.aio.AioRpcError as e:
            log.warning("consent unavailable; serving without personalisation: %s", e.code())
            return Preferences(False, ())
        prefs = resp.preferences
        return Preferences(prefs.personalization_enabled, tuple(prefs.interests))


ChargeStream = StreamClient[billing_pb2.ChargeAdEventRequest, billing_pb2.ChargeAdEventResponse]


class Billing:
    """`charges`: the long-lived ChargeAdEventStream that every charge goes on (kit/multiplex.py),
    failing with the grpc errors of the unary call; None: unary ChargeAdEvent calls."""

    def __init__(self, channel: grpc.aio.Channel, *, charges: ChargeStream | None = None) -> None:
        self._stub = billing_pb2_grpc.BillingServiceStub(channel)
        self._charges = charges

    @classmethod
    def open(cls, runtime: Runtime) -> Billing:
        """On the runtime's billing channel, charging over a stream unless
        BIZMSG_INTERNAL_STREAMS=0; the stream ends when the service stops."""
        channel = runtime.channel("billing")
        stub = billing_pb2_grpc.BillingServiceStub(channel)
        charges = multiplex.open_for(
            runtime,
            "billing",
            stub.ChargeAdEventStream,
            billing_pb2.ChargeAdEventStreamItem,
            batch=billing_pb2.ChargeAdEventStreamRequest,
            unary=stub.ChargeAdEvent,
        )
        return cls(channel, charges=charges)

    async def charge(
        self,
        event_id: str,
        campaign_id: str,
        account_id: str,
        click: bool,
        micros: int,
        currency: str,
    ) -> Charge:
        kind = billing_pb2.AD_EVENT_KIND_CLICK if click else billing_pb2.AD_EVENT_KIND_IMPRESSION
        request = billing_pb2.ChargeAdEventRequest(
            request_id=event_id,
            campaign_id=campaign_id,
            account_id=account_id,
            kind=kind,
            amount=common_pb2.Money(amount_micros=micros, currency_code=currency),
        )
        try:
            if self._charges is not None:
                await self._charges.call(request)
            else:
                await self._stub.ChargeAdEvent(request)
        except grpc.aio.AioRpcError as e:
            if e.code() in _REFUSALS:
                log.info("billing refused ad charge %s: %s", event_id, e.code())
                return Charge.REFUSED
            log.warning("billing did not answer ad charge %s: %s", event_id, e.code())
            return Charge.UNKNOWN
        return Charge.POSTED

    async def wallet_check(self, account_id: str, advertiser_id: str, currency: str) -> None:
        """The account must be the advertiser's own wallet, in the auction's currency."""
        try:
            resp = await self._stub.GetAccount(billing_pb2.GetAccountRequest(account_id=account_id))
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise InvalidArgument(
                    [("campaign.account_id", "no such billing account")]
                ) from None
            if e.code() == grpc.StatusCode.PERMISSION_DENIED:
                raise PermissionDenied(
                    "NOT_ACCOUNT_OWNER", "not the advertiser's account"
                ) from None
            raise Unavailable("BILLING_UNAVAILABLE", "billing did not answer; retry") from None
        account = resp.account
        if (
            account.kind != billing_pb2.ACCOUNT_KIND_ADVERTISER_WALLET
            or account.owner != f"advertiser:{advertiser_id}"
        ):
            raise PermissionDenied(
                "NOT_ACCOUNT_OWNER", "the billing account is not this advertiser's wallet"
            )
        if account.currency_code != currency:
            raise InvalidArgument(
                [
                    (
                        "campaign.account_id",
                        f"the account is in {account.currency_code}, not {currency}",
                    )
                ]
            )
