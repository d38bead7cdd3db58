"""The platform as a user meets it: processes, health, reflection, buf curl, bizmsg run, README.

Runs on SQLite: these tests are about the process and the wire, not the storage.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from bizmsg.kit.config import PORTS
from bizmsg.kit.processes import SERVICE_NAMES, ServiceProcess, free_port, start_stack
from bizmsg.kit.testing import TEST_SECRET, token_for

REPO = Path(__file__).resolve().parents[1]
BUF = shutil.which("buf") or shutil.which(str(REPO / ".ci/buf/node_modules/.bin/buf"))
needs_buf = pytest.mark.skipif(
    BUF is None, reason="buf is not installed (bash .ci/setup installs it)"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServiceProcess]]:
    procs = start_stack(tmp_path_factory.mktemp("stack"))
    yield procs
    for p in procs.values():
        p.terminate()


@pytest.mark.parametrize("name", sorted(PORTS))
def test_each_service_is_serving_and_reflects_itself(
    stack: dict[str, ServiceProcess], name: str
) -> None:
    with grpc.insecure_channel(stack[name].target) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE_NAMES[name]):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        ask = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(
            iter(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([ask])))
        )
        names = {s.name for s in reply.list_services_response.service}
        assert SERVICE_NAMES[name] in names and "grpc.health.v1.Health" in names


def _buf_curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert BUF is not None
    return subprocess.run(
        [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_buf
@pytest.mark.parametrize("name", sorted(PORTS))
def test_buf_curl_lists_each_service(stack: dict[str, ServiceProcess], name: str) -> None:
    out = _buf_curl("--list-services", f"http://{stack[name].target}")
    assert out.returncode == 0, out.stderr
    assert SERVICE_NAMES[name] in out.stdout.split()


@needs_buf
def test_buf_curl_calls_without_and_with_token(stack: dict[str, ServiceProcess]) -> None:
    url = f"http://{stack['consent'].target}/{SERVICE_NAMES['consent']}/GetAdPreferences"
    body = '{"person_id": "alice"}'
    denied = _buf_curl("-d", body, url)
    assert denied.returncode != 0 and "unauthenticated" in (denied.stdout + denied.stderr).lower()
    ok = _buf_curl("-H", f"authorization: Bearer {token_for('user:alice')}", "-d", body, url)
    assert ok.returncode == 0, ok.stderr
    assert "preferences" in ok.stdout


def _readme_calls() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Calling it", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]


@needs_buf
def test_readme_examples_work(stack: dict[str, ServiceProcess]) -> None:
    commands = _readme_calls()
    assert any(c.startswith("buf curl") for c in commands)
    runnable = [c for c in commands if not c.startswith("grpcurl") or shutil.which("grpcurl")]
    script = "set -euo pipefail\n" + "\n".join(
        c.replace("127.0.0.1:50051", stack["consent"].target).replace(".venv/bin/", "")
        for c in runnable
    )
    env = {
        **os.environ,
        "BIZMSG_TOKEN_SECRET": TEST_SECRET,
        "PATH": f"{Path(BUF or '').parent}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert SERVICE_NAMES["consent"] in out.stdout and "preferences" in out.stdout


def test_bizmsg_run_prints_how_to_call_and_stops_cleanly(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BIZMSG_DATA_DIR": str(tmp_path / "data"),
        "BIZMSG_TOKEN_SECRET": TEST_SECRET,
    }
    for name in PORTS:
        env[f"BIZMSG_{name.upper()}_PORT"] = str(free_port())
    proc = subprocess.Popen(
        [sys.executable, "-m", "bizmsg.cli", "run"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        out = "".join(lines)
        for name in PORTS:
            assert f"127.0.0.1:{env[f'BIZMSG_{name.upper()}_PORT']}" in out
        for kind in ("USER", "BUSINESS", "ADVERTISER", "ADMIN"):
            assert re.search(rf"export TOKEN_{kind}=\S+\.\S+\.\S+", out), out
        assert "grpcurl -plaintext" in out and "buf curl" in out
        assert (tmp_path / "data" / "consent.db").exists()
        if BUF:
            token = re.search(r"export TOKEN_USER=(\S+)", out).group(1)  # type: ignore[union-attr]
            call = next(line.strip() for line in lines if "buf curl" in line and "-d" in line)
            shell = call.replace("buf curl", f"{BUF} curl").replace("$TOKEN_USER", token)
            res = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=60)
            assert res.returncode == 0 and "preferences" in res.stdout, res.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    assert code == 0
