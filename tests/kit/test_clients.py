"""Outgoing calls: a service token, the request id, and a deadline no longer than the caller's."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from bizmsg.kit.testing import ServiceThread, metadata_for

from .echo_service import DEFINITION, RELAY, RELAY_SERVICE


@pytest.fixture
def relay(tmp_path: Path):  # type: ignore[no-untyped-def]
    echo = ServiceThread(DEFINITION, database_url=f"sqlite+aiosqlite:///{tmp_path}/a.db")
    with (
        echo,
        ServiceThread(
            RELAY,
            database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db",
            dependency_targets={"consent": echo.target},
            env={"BIZMSG_CALL_TIMEOUT": "3"},
        ) as svc,
        grpc.insecure_channel(svc.target) as ch,
    ):
        yield ch.unary_unary(f"/{RELAY_SERVICE}/Relay")


def test_dependency_sees_the_service_principal(relay) -> None:  # type: ignore[no-untyped-def]
    assert relay(b"Echo:hello", metadata=metadata_for("user:alice"), timeout=5) == (
        b"service:delivery|hello"
    )


def test_outgoing_deadline_is_the_callers_remaining_time(relay) -> None:  # type: ignore[no-untyped-def]
    left = float(relay(b"Remaining:", metadata=metadata_for("user:alice"), timeout=1.0))
    # The caller's 1 s (give or take clock granularity across the hop), not the 3 s default.
    assert 0 < left < 1.5


def test_outgoing_deadline_defaults_when_caller_has_none(relay) -> None:  # type: ignore[no-untyped-def]
    left = float(relay(b"Remaining:", metadata=metadata_for("user:alice")))
    assert 2.0 < left < 3.5  # BIZMSG_CALL_TIMEOUT (3 s), give or take clock granularity


def test_slow_dependency_gives_deadline_exceeded(relay) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        relay(b"Slow:10", metadata=metadata_for("user:alice"))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "DEADLINE_EXCEEDED" in (e.value.details() or "")
    assert time.monotonic() - started < 6
