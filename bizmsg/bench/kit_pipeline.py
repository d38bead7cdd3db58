"""The kit pipeline: SendMessage's three hops through bizmsg's own framework, with no work inside.

Three processes started as the services are (bizmsg.kit.server.start: the interceptor with its
token check, deadline and request-id handling and one log line per call, health, reflection,
uvloop), named consent, billing and delivery so that tokens and principals are the real ones.
The front's SendMessage asks consent and then billing with delivery's own client code
(delivery_svc.dependencies: the long-lived streams of kit/multiplex.py), and both answer at
once. Measured beside the null pipeline (three bare unary hops) and SendMessage, it splits the
gap between them into what the framework and internal transport cost and what the work of a
message (validation, the consent rule, the ledger, the stores) costs.

Run one server: python -m bizmsg.bench.kit_pipeline consent|billing|front --port N
                [--consent T --billing T]
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from bizmsg.bench.null_pipeline import arguments, until_stopped
from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit import logs, multiplex
from bizmsg.kit.config import Settings
from bizmsg.kit.loop import loop_factory, tune_gc
from bizmsg.kit.server import Runtime, ServiceDefinition, start
from delivery_svc.dependencies import ChargeRequest, Dependencies

_HOLD = timedelta(days=31)


# The servicers implement the hot path's methods only; the generated base classes answer the
# others UNIMPLEMENTED (their stubs declare them abstract, hence the type: ignore[abstract]).


class _Consent(consent_pb2_grpc.ConsentServiceServicer):
    async def CheckConsent(self, request: consent_pb2.CheckConsentRequest, context: Any) -> Any:
        return consent_pb2.CheckConsentResponse(allowed=True)

    def CheckConsentStream(
        self, request_iterator: AsyncIterator[consent_pb2.CheckConsentStreamRequest], context: Any
    ) -> AsyncIterator[consent_pb2.CheckConsentStreamResponse]:
        return multiplex.serve(
            request_iterator,
            context,
            "CheckConsent",
            self.CheckConsent,
            consent_pb2.CheckConsentStreamResponse,
        )


class _Billing(billing_pb2_grpc.BillingServiceServicer):
    async def AuthorizeCharge(
        self, request: billing_pb2.AuthorizeChargeRequest, context: Any
    ) -> Any:
        return billing_pb2.AuthorizeChargeResponse(authorization_id=request.request_id)

    def AuthorizeChargeStream(
        self,
        request_iterator: AsyncIterator[billing_pb2.AuthorizeChargeStreamRequest],
        context: Any,
    ) -> AsyncIterator[billing_pb2.AuthorizeChargeStreamResponse]:
        return multiplex.serve(
            request_iterator,
            context,
            "AuthorizeCharge",
            self.AuthorizeCharge,
            billing_pb2.AuthorizeChargeStreamResponse,
        )


class _Front(delivery_pb2_grpc.DeliveryServiceServicer):
    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps

    async def SendMessage(self, request: delivery_pb2.SendMessageRequest, context: Any) -> Any:
        person = request.recipient.partition(":")[2]
        await self.deps.check_consent("bench", person, request.category)
        await self.deps.authorize(
            ChargeRequest(
                message_id=request.request_id,
                business_id="bench",
                country="DE",
                category=request.category,
                window_kind=common_pb2.WINDOW_KIND_NONE,
                hold=_HOLD,
            )
        )
        return delivery_pb2.SendMessageResponse(message_id=request.request_id)


async def _leaf(servicer: Any) -> Any:
    return servicer


def definition(role: str) -> ServiceDefinition:
    if role == "consent":
        return ServiceDefinition(
            name="consent",
            service_name="bizmsg.consent.v1.ConsentService",
            add_servicer=consent_pb2_grpc.add_ConsentServiceServicer_to_server,
            build=lambda _: _leaf(_Consent()),  # type: ignore[abstract]
        )
    if role == "billing":
        return ServiceDefinition(
            name="billing",
            service_name="bizmsg.billing.v1.BillingService",
            add_servicer=billing_pb2_grpc.add_BillingServiceServicer_to_server,
            build=lambda _: _leaf(_Billing()),  # type: ignore[abstract]
        )

    async def build(runtime: Runtime) -> _Front:
        return _Front(Dependencies(runtime))  # type: ignore[abstract]

    return ServiceDefinition(
        name="delivery",
        service_name="bizmsg.delivery.v1.DeliveryService",
        add_servicer=delivery_pb2_grpc.add_DeliveryServiceServicer_to_server,
        build=build,
        dependencies=("consent", "billing"),
    )


async def serve(role: str, port: int, targets: dict[str, str]) -> None:
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)  # start() opens a database there
    running = await start(definition(role), settings, port=port, dependency_targets=targets or None)
    await until_stopped()
    await running.stop(1.0)


def main(argv: list[str] | None = None) -> None:
    ns = arguments("bizmsg.bench.kit_pipeline", ("front", "consent", "billing"), argv)
    settings = Settings()
    logs.configure(settings.log_level, f"kit-{ns.role}")
    targets = {"consent": ns.consent, "billing": ns.billing} if ns.role == "front" else {}
    tune_gc()  # as the services (bizmsg.kit.server)
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        runner.run(serve(ns.role, ns.port, targets))


if __name__ == "__main__":
    main()
