"""Harnesses for tests: services in-process (ServiceThread) and as real processes (ServiceProcess).

Tests talk to both with plain synchronous grpc stubs, so they need no event loop of their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.clock import Clock
from bizmsg.kit.config import DEV_TOKEN_SECRET, PORTS, Settings
from bizmsg.kit.server import RunningService, ServiceDefinition, start

TEST_SECRET = DEV_TOKEN_SECRET
_tokens = TokenAuthority(TEST_SECRET.encode())
REPO_ROOT = Path(__file__).resolve().parents[2]


def token_for(principal: str) -> str:
    return _tokens.mint(principal)


def metadata_for(principal: str) -> list[tuple[str, str]]:
    """Call metadata carrying a valid bearer token for `principal`."""
    return [("authorization", f"Bearer {token_for(principal)}")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_serving(target: str, service_name: str = "", timeout: float = 30.0) -> None:
    """Block until the health service at `target` reports SERVING."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while True:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service_name), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{target} did not become SERVING in {timeout}s")
            time.sleep(0.05)


class ServiceThread:
    """One service served in-process, on its own event loop in a background thread."""

    def __init__(
        self,
        definition: ServiceDefinition,
        *,
        database_url: str,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        dependency_targets: Mapping[str, str] | None = None,
        data_dir: str | Path | None = None,
    ) -> None:
        self.definition = definition
        environ = {
            "BIZMSG_TOKEN_SECRET": TEST_SECRET,
            f"BIZMSG_{definition.name.upper()}_DATABASE_URL": database_url,
            "BIZMSG_DATA_DIR": str(data_dir or Path(database_url.rpartition("/")[2]).parent),
            **(env or {}),
        }
        self.settings = Settings(environ)
        self.clock = clock
        self.dependency_targets = dict(dependency_targets or {})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._running: RunningService | None = None

    def _submit(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=60)

    def start(self) -> ServiceThread:
        self._thread.start()
        self._running = self._submit(
            start(
                self.definition,
                self.settings,
                clock=self.clock,
                port=0,
                dependency_targets=self.dependency_targets,
            )
        )
        return self

    @property
    def running(self) -> RunningService:
        assert self._running is not None, "service not started"
        return self._running

    @property
    def runtime(self) -> Any:
        return self.running.runtime

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the service's loop (e.g. to inspect its database)."""
        return self._submit(coro)

    def stop(self, grace: float = 1.0) -> None:
        if self._running is not None:
            self._submit(self._running.stop(grace))
            self._running = None
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ServiceThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


SERVICE_NAMES = {
    "consent": "bizmsg.consent.v1.ConsentService",
    "delivery": "bizmsg.delivery.v1.DeliveryService",
    "billing": "bizmsg.billing.v1.BillingService",
    "ads": "bizmsg.ads.v1.AdsService",
}


class ServiceProcess:
    """A service as a real `python -m <name>_svc` process on a free port."""

    def __init__(
        self, name: str, env: Mapping[str, str], log_path: Path, port: int | None = None
    ) -> None:
        self.name = name
        self.port = port or free_port()
        self.env = {
            **os.environ,
            "BIZMSG_TOKEN_SECRET": TEST_SECRET,
            **env,
            f"BIZMSG_{name.upper()}_PORT": str(self.port),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"{self.name}_svc"],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_serving(self, timeout: float = 60.0) -> ServiceProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                wait_serving(self.target, SERVICE_NAMES.get(self.name, ""), timeout=1.0)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self._log:
                self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log:
            self._log.close()

    def restart(self) -> ServiceProcess:
        self.terminate()
        return self.start().wait_serving()


def stack_env(
    data_dir: Path, database_urls: Mapping[str, str], ports: Mapping[str, int]
) -> dict[str, str]:
    env = {"BIZMSG_DATA_DIR": str(data_dir)}
    for name, url in database_urls.items():
        env[f"BIZMSG_{name.upper()}_DATABASE_URL"] = url
    for name, port in ports.items():
        env[f"BIZMSG_{name.upper()}_PORT"] = str(port)
        env[f"BIZMSG_{name.upper()}_TARGET"] = f"127.0.0.1:{port}"
    return env


def start_stack(
    tmp_path: Path,
    database_urls: Mapping[str, str] | None = None,
    *,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, ServiceProcess]:
    """All four services as real processes (SQLite files in tmp_path unless URLs are given)."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    ports = {name: free_port() for name in PORTS}
    urls = dict(database_urls or {})
    env = {**stack_env(data_dir, urls, ports), **(extra_env or {})}
    procs: dict[str, ServiceProcess] = {}
    try:
        for name in ("consent", "billing", "delivery", "ads"):
            p = ServiceProcess(name, env, tmp_path / f"{name}.log", port=ports[name])
            procs[name] = p.start()
        for p in procs.values():
            p.wait_serving()
    except BaseException:
        for p in procs.values():
            p.kill()
        raise
    return procs
