"""Outgoing calls to other bizmsg services.

One channel per dependency, made once and reused. Every call carries this service's
`service:<name>` token, the incoming call's request id, and a deadline: the smaller of
what the incoming call has left and the configured default (DESIGN.md, rule 7).

Bidirectional streams are not intercepted: the only ones between services are long-lived
multiplexed streams (kit/multiplex.py), which outlive any one incoming call. They carry the
request id and deadline per item, and send `Channels.authorization()` when they open.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import grpc

from bizmsg.kit import calls
from bizmsg.kit.auth import Principal, TokenAuthority
from bizmsg.kit.config import Settings, TlsFiles


class _ServiceToken:
    """This service's own bearer token, re-minted well before it expires."""

    TTL = timedelta(hours=1)

    def __init__(self, tokens: TokenAuthority, service: str) -> None:
        self._tokens = tokens
        self._principal = Principal("service", service)
        self._value = ""
        self._renew_at = 0.0

    def header(self) -> str:
        now = time.monotonic()
        if now >= self._renew_at:
            self._value = "Bearer " + self._tokens.mint(self._principal, ttl=self.TTL)
            self._renew_at = now + self.TTL.total_seconds() / 2
        return self._value


class OutgoingInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor,  # type: ignore[misc]
    grpc.aio.UnaryStreamClientInterceptor,  # type: ignore[misc]
):
    def __init__(self, token: _ServiceToken, default_timeout: float) -> None:
        self._token = token
        self._default_timeout = default_timeout

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        md = grpc.aio.Metadata(*(details.metadata or ()))
        if "authorization" not in md:
            md["authorization"] = self._token.header()
        rid = calls.current_request_id()
        if rid and "x-request-id" not in md:
            md["x-request-id"] = rid
        timeout = details.timeout if details.timeout is not None else self._default_timeout
        remaining = calls.time_remaining()
        if remaining is not None:
            timeout = max(0.001, min(timeout, remaining))
        return grpc.aio.ClientCallDetails(
            details.method, timeout, md, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Mutual TLS: the server presents its certificate and requires one from every client."""
    return grpc.ssl_server_credentials(
        [(tls.key.read_bytes(), tls.cert.read_bytes())],
        root_certificates=tls.ca.read_bytes(),
        require_client_auth=True,
    )


CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


class Channels:
    """The dependency channels of one service process."""

    def __init__(self, settings: Settings, service: str, tokens: TokenAuthority) -> None:
        self._settings = settings
        self._token = _ServiceToken(tokens, service)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._targets: dict[str, str] = {}

    def authorization(self) -> str:
        """This service's `authorization` header value, as every outgoing call carries it."""
        return self._token.header()

    def set_target(self, dependency: str, target: str) -> None:
        self._targets[dependency] = target

    def get(self, dependency: str) -> grpc.aio.Channel:
        ch = self._channels.get(dependency)
        if ch is None:
            target = self._targets.get(dependency) or self._settings.target(dependency)
            interceptors = [OutgoingInterceptor(self._token, self._settings.call_timeout)]
            tls = self._settings.tls
            if tls is None:
                ch = grpc.aio.insecure_channel(
                    target, options=CHANNEL_OPTIONS, interceptors=interceptors
                )
            else:
                ch = grpc.aio.secure_channel(
                    target,
                    channel_credentials(tls),
                    options=CHANNEL_OPTIONS,
                    interceptors=interceptors,
                )
            self._channels[dependency] = ch
        return ch

    async def close(self) -> None:
        for ch in self._channels.values():
            await ch.close(grace=None)
        self._channels.clear()
