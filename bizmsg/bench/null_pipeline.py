"""The null pipeline: the hot path's shape with nothing inside it.

Three gRPC servers (grpc.aio, one process each, like the real layout): a front answering the
real SendMessage method path, which per request calls a "consent" server and then a "billing"
server with plain unary calls over channels made once, then answers. Handlers take and return
raw bytes and do no work, so the throughput is the physical limit of three Python gRPC hops on
this machine; the same load generator drives it and the real pipeline.

Run one server: python -m bizmsg.bench.null_pipeline leaf|front --port N [--consent T --billing T]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from bizmsg.kit.config import Settings
from bizmsg.kit.loop import loop_factory, tune_gc

FRONT_SERVICE, FRONT_METHOD = "bizmsg.delivery.v1.DeliveryService", "SendMessage"
CONSENT_PATH = "/bizmsg.consent.v1.ConsentService/CheckConsent"
BILLING_PATH = "/bizmsg.billing.v1.BillingService/AuthorizeCharge"
STATS_SERVICE, STATS_METHOD = "bizmsg.bench.NullPipeline", "Stats"
STATS_PATH = f"/{STATS_SERVICE}/{STATS_METHOD}"
# The real services give every outgoing call a deadline (5 s by default); so does the front.
CALL_TIMEOUT = 5.0


class Counts:
    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0

    async def stats(self, request: bytes, context: Any) -> bytes:
        return json.dumps({"ok": self.ok, "failed": self.failed}).encode()


def _leaf_handlers(counts: Counts) -> list[grpc.GenericRpcHandler]:
    async def empty(request: bytes, context: Any) -> bytes:
        counts.ok += 1
        return b""

    handlers = []
    for path in (CONSENT_PATH, BILLING_PATH):
        service, method = path[1:].split("/")
        handlers.append(
            grpc.method_handlers_generic_handler(
                service, {method: grpc.unary_unary_rpc_method_handler(empty)}
            )
        )
    return handlers


def _front_handlers(
    counts: Counts, consent: grpc.aio.Channel, billing: grpc.aio.Channel
) -> list[grpc.GenericRpcHandler]:
    check = consent.unary_unary(CONSENT_PATH)
    authorize = billing.unary_unary(BILLING_PATH)

    async def send(request: bytes, context: Any) -> bytes:
        try:
            await check(b"", timeout=CALL_TIMEOUT)
            await authorize(b"", timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            counts.failed += 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"dependency: {e.code().name}")
        counts.ok += 1
        return b""

    return [
        grpc.method_handlers_generic_handler(
            FRONT_SERVICE, {FRONT_METHOD: grpc.unary_unary_rpc_method_handler(send)}
        )
    ]


async def serve(role: str, port: int, consent_target: str, billing_target: str) -> None:
    counts = Counts()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    channels: list[grpc.aio.Channel] = []
    if role == "front":
        channels = [
            grpc.aio.insecure_channel(consent_target),
            grpc.aio.insecure_channel(billing_target),
        ]
        handlers = _front_handlers(counts, channels[0], channels[1])
    else:
        handlers = _leaf_handlers(counts)
    handlers.append(
        grpc.method_handlers_generic_handler(
            STATS_SERVICE, {STATS_METHOD: grpc.unary_unary_rpc_method_handler(counts.stats)}
        )
    )
    server.add_generic_rpc_handlers(handlers)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await until_stopped()
    await server.stop(1.0)
    for ch in channels:
        await ch.close()


async def until_stopped() -> None:
    """Until SIGTERM or SIGINT (how the bench stops its processes)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def arguments(module: str, roles: tuple[str, ...], argv: list[str] | None) -> argparse.Namespace:
    """A pipeline process's command line: its role, port and (the front) the leaves."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}")
    parser.add_argument("role", choices=roles)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--consent", default="", help="host:port of the consent leaf (front)")
    parser.add_argument("--billing", default="", help="host:port of the billing leaf (front)")
    ns = parser.parse_args(argv)
    if ns.role == "front" and not (ns.consent and ns.billing):
        parser.error("the front needs --consent and --billing")
    return ns


def main(argv: list[str] | None = None) -> None:
    ns = arguments("bizmsg.bench.null_pipeline", ("front", "leaf"), argv)
    # The same event loop and collector settings as the services (bizmsg.kit.server): the
    # same process layout.
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(Settings())) as runner:
        runner.run(serve(ns.role, ns.port, ns.consent, ns.billing))


if __name__ == "__main__":
    main()
