"""A tiny service built on the kit alone, for testing the kit itself (raw-bytes methods).

Run as a process: `python tests/kit/echo_service.py` (reads the usual BIZMSG_* variables).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import grpc

from bizmsg.kit import errors
from bizmsg.kit.auth import current_principal
from bizmsg.kit.server import Runtime, ServiceDefinition, main

SERVICE = "bizmsg.test.v1.EchoService"


class Echo:
    async def echo(self, request: bytes, context: Any) -> bytes:
        return str(current_principal()).encode() + b"|" + request

    async def slow(self, request: bytes, context: Any) -> bytes:
        await asyncio.sleep(float(request.decode() or "1"))
        return b"done"

    async def remaining(self, request: bytes, context: Any) -> bytes:
        """The deadline this call arrived with, in seconds ("none" without one)."""
        left = context.time_remaining()
        return b"none" if left is None else f"{left:.3f}".encode()

    async def invalid(self, request: bytes, context: Any) -> bytes:
        raise errors.InvalidArgument([("name", "is required")])

    async def bug(self, request: bytes, context: Any) -> bytes:
        raise RuntimeError("secret internal detail")

    async def stream(self, request: bytes, context: Any) -> Any:
        for i in range(3):
            yield str(i).encode()
        raise errors.ResourceExhausted("TOO_MANY", "stop", retry_after=2.5)


def add(servicer: Echo, server: grpc.aio.Server) -> None:
    unary = grpc.unary_unary_rpc_method_handler
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": unary(servicer.echo),
                    "Slow": unary(servicer.slow),
                    "Remaining": unary(servicer.remaining),
                    "Invalid": unary(servicer.invalid),
                    "Bug": unary(servicer.bug),
                    "Stream": grpc.unary_stream_rpc_method_handler(servicer.stream),
                },
            ),
        )
    )


async def build(runtime: Runtime) -> Echo:
    return Echo()


DEFINITION = ServiceDefinition(name="consent", service_name=SERVICE, add_servicer=add, build=build)

RELAY_SERVICE = "bizmsg.test.v1.RelayService"


class Relay:
    """Calls the echo service as a dependency: `body` is "<method>:<payload>"."""

    def __init__(self, runtime: Runtime) -> None:
        self.channel = runtime.channel("consent")

    async def relay(self, request: bytes, context: Any) -> bytes:
        method, _, payload = request.decode().partition(":")
        try:
            out: bytes = await self.channel.unary_unary(f"/{SERVICE}/{method}")(payload.encode())
        except grpc.aio.AioRpcError as e:
            raise errors.Unavailable("DEPENDENCY_FAILED", e.code().name) from e
        return out


def add_relay(servicer: Relay, server: grpc.aio.Server) -> None:
    handler = grpc.method_handlers_generic_handler(
        RELAY_SERVICE, {"Relay": grpc.unary_unary_rpc_method_handler(servicer.relay)}
    )
    server.add_generic_rpc_handlers((handler,))


async def build_relay(runtime: Runtime) -> Relay:
    return Relay(runtime)


RELAY = ServiceDefinition(
    name="delivery",
    service_name=RELAY_SERVICE,
    add_servicer=add_relay,
    build=build_relay,
    dependencies=("consent",),
)

if __name__ == "__main__":
    sys.exit(main(DEFINITION))
