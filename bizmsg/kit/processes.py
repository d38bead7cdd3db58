"""Services as real processes: `bizmsg run` and the integration tests start them this way."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bizmsg.kit.config import DEV_TOKEN_SECRET, PORTS

REPO_ROOT = Path(__file__).resolve().parents[2]


# Ports handed out by this process, so two services of one stack never get the same one.
_handed_out: set[int] = set()
_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A port nothing listens on, for a service about to start, taken below the kernel's
    ephemeral range: a port bound to 0 comes from that range, which the kernel also gives to
    outgoing connections (h2load's, PostgreSQL clients'), and under load one took it between
    this check and the service's bind (seen in a bench: "Failed to bind")."""
    top = _ephemeral_start()
    for _ in range(200):
        port = random.randrange(max(1024, top - 12000), top)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # something listens there
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # that whole range taken: let the kernel choose
        s.bind(("127.0.0.1", 0))
        chosen: int = s.getsockname()[1]
        return chosen


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
            "BIZMSG_TOKEN_SECRET": DEV_TOKEN_SECRET,
            **env,
            f"BIZMSG_{name.upper()}_PORT": str(self.port),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = False
        self._log: IO[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._stopping = False
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
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                wait_serving(self.target, SERVICE_NAMES.get(self.name, ""), timeout=1.0)
                return self
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def request_stop(self) -> None:
        """Send SIGTERM once (a service drains on the first and exits 0)."""
        if self.proc is not None and self.proc.poll() is None and not self._stopping:
            self._stopping = True
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (once) and wait; returns the exit code."""
        assert self.proc is not None
        self.request_stop()
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
