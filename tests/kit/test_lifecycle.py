"""A kit service as a real process: SERVING when ready, draining on SIGTERM, exit code 0."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bizmsg.kit.processes import _ephemeral_start
from bizmsg.kit.testing import TEST_SECRET, free_port, metadata_for, wait_serving

from .echo_service import SERVICE

ECHO = Path(__file__).with_name("echo_service.py")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def echo_process(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "BIZMSG_TOKEN_SECRET": TEST_SECRET,
        "BIZMSG_DATA_DIR": str(tmp_path),
        "BIZMSG_CONSENT_PORT": str(port),
        "BIZMSG_GRACE_SECONDS": "10",
    }
    log = open(tmp_path / "echo.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, str(ECHO)], env=env, stdout=log, stderr=log)
    try:
        wait_serving(f"127.0.0.1:{port}", SERVICE)
        yield proc, f"127.0.0.1:{port}", tmp_path / "echo.log"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()


def test_sigterm_drains_in_flight_calls_then_exits_zero(echo_process) -> None:  # type: ignore[no-untyped-def]
    proc, target, log_path = echo_process
    with grpc.insecure_channel(target) as ch:
        slow = ch.unary_unary(f"/{SERVICE}/Slow")
        result: dict[str, object] = {}

        def call_slow() -> None:
            try:
                result["value"] = slow(b"1.5", metadata=metadata_for("admin"), timeout=20)
            except grpc.RpcError as e:
                result["error"] = e

        t = threading.Thread(target=call_slow)
        t.start()
        time.sleep(0.5)  # the slow call is in flight
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)  # draining has begun

        health = health_pb2_grpc.HealthStub(ch)
        try:
            status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        except grpc.RpcError as e:  # the server may already refuse every new call
            assert e.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as refused:
            ch.unary_unary(f"/{SERVICE}/Echo")(b"x", metadata=metadata_for("admin"), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        t.join(timeout=20)
    assert result.get("value") == b"done", result
    assert proc.wait(timeout=20) == 0
    lines = log_path.read_text().splitlines()
    assert any('"method": "/bizmsg.test.v1.EchoService/Slow"' in line for line in lines)
    assert any('"code": "OK"' in line and '"principal": "admin"' in line for line in lines)


def test_a_serving_process_tunes_the_collector_once_its_modules_are_imported() -> None:
    """kit.loop.tune_gc (run by every service's main, and the bench's pipelines): start-up's
    objects are frozen out of the collector's sight, and young collections run every
    GC_YOUNG_THRESHOLD allocations; a cycle made afterwards is still collected."""
    code = (
        "import gc, json\n"
        "from bizmsg.kit.loop import GC_YOUNG_THRESHOLD, tune_gc\n"
        "tune_gc()\n"
        "frozen = gc.get_freeze_count()\n"
        "class Node: pass\n"
        "a, b = Node(), Node()\n"
        "a.other, b.other = b, a\n"
        "import weakref\n"
        "gone = weakref.ref(a)\n"
        "del a, b\n"
        "gc.collect()\n"
        "print(json.dumps([gc.get_threshold()[0], GC_YOUNG_THRESHOLD, frozen, gone() is None]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    threshold, expected, frozen, collected = json.loads(out)
    assert threshold == expected
    assert frozen > 1000  # the imported modules' objects
    assert collected


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    """A service's port comes from below the range the kernel gives outgoing connections, so
    a busy machine's connections cannot take it before the service binds it."""
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= p < _ephemeral_start() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
