"""The server interceptor: request id, authentication, error mapping and one log line per call.

Health and reflection stay open (no token), so `grpcurl` / `buf curl` and load balancers
can use them. Every other call needs `authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from sqlalchemy.exc import DBAPIError

from bizmsg.kit import calls
from bizmsg.kit.auth import TokenAuthority, set_current_principal
from bizmsg.kit.errors import DomainError, Unauthenticated, Unavailable, internal_status
from bizmsg.kit.ids import new_id

log = logging.getLogger("bizmsg.rpc")
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def _metadata(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            out[key] = value
    return out


class _Call:
    """Book-keeping for one incoming call."""

    def __init__(self, service: str, method: str, tokens: TokenAuthority, context: Any) -> None:
        self.service = service
        self.domain = f"{service}.bizmsg"
        self.method = method
        self.context = context
        self.started = time.perf_counter()
        md = _metadata(context)
        rid = md.get("x-request-id", "")
        self.request_id = rid if 0 < len(rid) <= 128 and rid.isprintable() else new_id()
        self.principal = "-"
        self.code = grpc.StatusCode.OK
        calls.enter(self.request_id, context.time_remaining())
        auth = md.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        self.error: Unauthenticated | None = None
        if not auth:
            self.error = Unauthenticated(
                "TOKEN_MISSING", "authorization: Bearer <token> is required"
            )
            return
        if scheme.lower() != "bearer" or not token:
            self.error = Unauthenticated(
                "TOKEN_MALFORMED", "authorization must be 'Bearer <token>'"
            )
            return
        try:
            p = tokens.verify(token.strip())
        except Unauthenticated as e:
            self.error = e
            return
        self.principal = str(p)
        set_current_principal(p)

    async def fail(self, e: BaseException, draining: bool) -> None:
        if draining and not isinstance(e, DomainError):
            # Dependencies and pools close while draining; say so instead of INTERNAL.
            e = Unavailable("SHUTTING_DOWN", "the service is shutting down; retry", retry_after=1)
        elif isinstance(e, DBAPIError) and e.connection_invalidated:
            # The database went away under this call (restart, failover): nothing was
            # committed, and the pool has dropped the connection, so a retry can succeed.
            log.warning(
                "database connection lost", extra={"fields": {"request_id": self.request_id}}
            )
            e = Unavailable(
                "DATABASE_UNAVAILABLE", "the database is unreachable; retry", retry_after=1
            )
        if isinstance(e, DomainError):
            self.code = e.code
            status = rpc_status.to_status(e.to_status(self.domain))
            if e.code == grpc.StatusCode.INTERNAL:  # never for a domain error, but be safe
                log.error("domain error mapped to INTERNAL", exc_info=e)
        else:
            self.code = grpc.StatusCode.INTERNAL
            log.error(
                "unexpected error",
                exc_info=e,
                extra={"fields": {"request_id": self.request_id, "method": self.method}},
            )
            status = rpc_status.to_status(internal_status(self.request_id))
        await self.context.abort(
            status.code,
            status.details,
            trailing_metadata=(*status.trailing_metadata, ("x-request-id", self.request_id)),
        )

    def done(self) -> None:
        code = self.code
        if code == grpc.StatusCode.OK:
            try:
                c = self.context.code()
                if c is not None:
                    code = c if isinstance(c, grpc.StatusCode) else grpc.StatusCode(c)
            except (AttributeError, ValueError, TypeError):
                pass
        log.info(
            "rpc",
            extra={
                "fields": {
                    "service": self.service,
                    "method": self.method,
                    "principal": self.principal,
                    "code": code.name,
                    "duration_ms": round((time.perf_counter() - self.started) * 1000, 3),
                    "request_id": self.request_id,
                }
            },
        )


class ServerInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, service: str, tokens: TokenAuthority) -> None:
        self.service = service
        self.tokens = tokens
        self.draining = False

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        return self._wrap(handler, method)

    def _wrap(self, handler: Any, method: str) -> grpc.RpcMethodHandler:
        service, tokens, interceptor = self.service, self.tokens, self
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary or handler.stream_unary:
            behavior = handler.unary_unary or handler.stream_unary

            async def unary(request: Any, context: Any) -> Any:
                call = _Call(service, method, tokens, context)
                try:
                    if call.error is not None:
                        raise call.error
                    return await behavior(request, context)
                except asyncio.CancelledError:
                    call.code = grpc.StatusCode.CANCELLED
                    raise
                except (grpc.aio.AbortError, KeyboardInterrupt):
                    raise
                except Exception as e:
                    await call.fail(e, interceptor.draining)
                finally:
                    call.done()

            make = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return make(unary, **kwargs)

        behavior = handler.unary_stream or handler.stream_stream

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            call = _Call(service, method, tokens, context)
            try:
                if call.error is not None:
                    raise call.error
                async for item in behavior(request, context):
                    yield item
            except asyncio.CancelledError:
                call.code = grpc.StatusCode.CANCELLED
                raise
            except (grpc.aio.AbortError, KeyboardInterrupt):
                raise
            except Exception as e:
                await call.fail(e, interceptor.draining)
            finally:
                call.done()

        make_stream = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return make_stream(streaming, **kwargs)
