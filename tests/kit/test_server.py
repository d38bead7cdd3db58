"""The kit's server: authentication, error mapping, health, reflection, streaming."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bizmsg.kit import errors
from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.testing import TEST_SECRET, ServiceThread, metadata_for

from .echo_service import DEFINITION, SERVICE


@pytest.fixture
def echo(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite+aiosqlite:///{tmp_path}/e.db"
    with (
        ServiceThread(DEFINITION, database_url=url) as svc,
        grpc.insecure_channel(svc.target) as ch,
    ):
        yield ch


def call(ch: grpc.Channel, method: str, body: bytes = b"", metadata=None):  # type: ignore[no-untyped-def]
    return ch.unary_unary(f"/{SERVICE}/{method}")(body, metadata=metadata, timeout=10)


def test_valid_token_names_the_principal(echo: grpc.Channel) -> None:
    assert call(echo, "Echo", b"hi", metadata_for("business:acme")) == b"business:acme|hi"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "TOKEN_MISSING"),
        ("Basic abc", "TOKEN_MALFORMED"),
        ("Bearer not-a-jwt", "TOKEN_MALFORMED"),
        (
            "Bearer " + TokenAuthority(b"x" * 40).mint("admin"),
            "TOKEN_INVALID",
        ),
        (
            "Bearer "
            + TokenAuthority(TEST_SECRET.encode()).mint("admin", ttl=timedelta(seconds=-5)),
            "TOKEN_EXPIRED",
        ),
    ],
    ids=["missing", "not-bearer", "malformed", "forged", "expired"],
)
def test_bad_tokens_are_unauthenticated(
    echo: grpc.Channel, header: str | None, reason: str
) -> None:
    md = None if header is None else [("authorization", header)]
    with pytest.raises(grpc.RpcError) as e:
        call(echo, "Echo", b"x", md)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    info = errors.error_info(e.value)
    assert info is not None and info[0] == reason


def test_health_and_reflection_need_no_token(echo: grpc.Channel) -> None:
    resp = health_pb2_grpc.HealthStub(echo).Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(echo)
    replies = list(
        stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


def test_domain_error_becomes_rich_status(echo: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(echo, "Invalid", b"", metadata_for("admin"))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = errors.status_details(e.value)
    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1 and infos[0].domain == "consent.bizmsg"
    bad = [d for d in details if isinstance(d, error_details_pb2.BadRequest)]
    assert bad[0].field_violations[0].field == "name"


def test_unexpected_error_is_internal_without_internals(echo: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as e:
        call(echo, "Bug", b"", [*metadata_for("admin"), ("x-request-id", "req-123")])
    assert e.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (e.value.details() or "")
    assert "req-123" in (e.value.details() or "")


def test_stream_errors_after_items(echo: grpc.Channel) -> None:
    it = echo.unary_stream(f"/{SERVICE}/Stream")(b"", metadata=metadata_for("admin"), timeout=10)
    got = []
    with pytest.raises(grpc.RpcError) as e:
        for item in it:
            got.append(item)
    assert got == [b"0", b"1", b"2"]
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = [
        d for d in errors.status_details(e.value) if isinstance(d, error_details_pb2.RetryInfo)
    ]
    assert retry[0].retry_delay.seconds == 2


def test_cached_token_still_expires() -> None:
    import time as _time

    authority = TokenAuthority(TEST_SECRET.encode())
    token = authority.mint("user:bob", ttl=timedelta(seconds=1))
    assert str(authority.verify(token)) == "user:bob"
    assert str(authority.verify(token)) == "user:bob"  # from the cache
    _time.sleep(1.2)
    with pytest.raises(errors.Unauthenticated):
        authority.verify(token)


def test_services_run_on_uvloop_unless_turned_off() -> None:
    import asyncio

    import uvloop

    from bizmsg.kit.config import Settings
    from bizmsg.kit.loop import loop_factory

    factory = loop_factory(Settings(env={}))
    assert factory is not None
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert loop_factory(Settings(env={"BIZMSG_UVLOOP": "0"})) is None
    with asyncio.Runner(loop_factory=loop_factory(Settings(env={"BIZMSG_UVLOOP": "0"}))) as r:
        assert not isinstance(r.get_loop(), uvloop.Loop)
