"""Everything the bench runs against: the four services as real processes, and the null and kit
pipelines (three processes each), started on free ports, with their logs and pids."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bizmsg.bench.procs import BenchProcess
from bizmsg.kit.processes import ServiceProcess, start_stack
from bizmsg.kit.storage import postgres_execute, postgres_url

SERVICES = ("consent", "billing", "delivery", "ads")
NULL_NAMES = ("null-front", "null-consent", "null-billing")
KIT_NAMES = ("kit-front", "kit-consent", "kit-billing")
# A benchmark sends a person far more messages a minute than a conversation would; the
# per-pair limit (10 a minute) is raised so it is checked on every call but never trips. So is
# the ceiling of a business's messages per second (1,000, as the WhatsApp Business Platform's
# top tier): one business sends every bench message, and this machine moves more than 1,000 a
# second, so at 1,000 the bench measured the limit (refusals), not the pipeline.
# Calls still in flight when a run ends were abandoned by h2load; a short grace ends the bench
# promptly instead of waiting the default 10 s per service.
STOP_TIMEOUT = 8.0
# Seconds to reach the PostgreSQL server for the bench's CREATE, ANALYZE and DROP.
ADMIN_CONNECT_TIMEOUT = 10.0
BENCH_MESSAGES_PER_SECOND = 1_000_000
BENCH_ENV = {
    "BIZMSG_DELIVERY_PAIR_LIMIT_PER_MINUTE": "100000000",
    "BIZMSG_DELIVERY_MAX_MESSAGES_PER_SECOND": str(BENCH_MESSAGES_PER_SECOND),
    "BIZMSG_GRACE_SECONDS": "2",
}


@dataclass
class Stack:
    work_dir: Path
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    null: dict[str, BenchProcess] = field(default_factory=dict)
    kit: dict[str, BenchProcess] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    admin_url: str | None = None
    stop_problems: list[str] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def target(self, name: str) -> str:
        if name == "null":
            return self.null["null-front"].target
        if name == "kit":
            return self.kit["kit-front"].target
        return self.services[name].target

    def database_url(self, name: str) -> str:
        """Where a service keeps its data (the SQLite file start_stack gives it by default)."""
        default = self.work_dir / "data" / f"{name}.db"
        return self.urls.get(name) or f"sqlite+aiosqlite:///{default.resolve()}"

    def pids(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, sp in self.services.items():
            if sp.proc is not None:
                out[name] = sp.proc.pid
        for name, bp in (*self.null.items(), *self.kit.items()):
            out[name] = bp.pid
        return out

    def logs(self) -> dict[str, Path]:
        """The logs of everything that logs a line per call: the services and the kit pipeline."""
        out = {name: sp.log_path for name, sp in self.services.items()}
        out.update({name: bp.log_path for name, bp in self.kit.items()})
        return out

    def start_null(self) -> None:
        self._start_pipeline(self.null, "bizmsg.bench.null_pipeline", "null", ("leaf", "leaf"))

    def start_kit(self) -> None:
        # Each process opens a database at start as the services do (unused here).
        env = {**BENCH_ENV, "BIZMSG_DATA_DIR": str(self.work_dir / "kit-data")}
        roles = ("consent", "billing")
        self._start_pipeline(self.kit, "bizmsg.bench.kit_pipeline", "kit", roles, env)

    def _start_pipeline(
        self,
        started: dict[str, BenchProcess],
        module: str,
        prefix: str,
        leaf_roles: tuple[str, str],
        env: dict[str, str] | None = None,
    ) -> None:
        """A pipeline's three processes into `started` as each starts (so that stop() stops
        them whatever fails): `<prefix>-consent` and `-billing`, serving, then `-front`."""
        logs = self.work_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)

        def process(role: str, args: list[str]) -> BenchProcess:
            name = f"{prefix}-{role}"
            started[name] = BenchProcess(name, module, args, logs / f"{name}.log", env).start()
            return started[name]

        consent = process("consent", [leaf_roles[0]])
        billing = process("billing", [leaf_roles[1]])
        consent.wait_serving()
        billing.wait_serving()
        leaves = ["--consent", consent.target, "--billing", billing.target]
        process("front", ["front", *leaves]).wait_serving()

    def start_services(
        self, database_url: str | None, extra_env: dict[str, str] | None = None
    ) -> None:
        # A kept --work-dir must not carry the last run's rows into this one.
        shutil.rmtree(self.work_dir / "data", ignore_errors=True)
        urls: dict[str, str] = {}
        if database_url:
            self.admin_url = database_url
            for name in SERVICES:
                db = f"bizmsg_bench_{name}_{uuid.uuid4().hex[:8]}"
                pg_admin(database_url, f'CREATE DATABASE "{db}"')
                self.databases.append(db)
                urls[name] = postgres_url(database_url, database=db)
        self.urls = urls
        env = {**BENCH_ENV, **(extra_env or {})}
        self.services = start_stack(self.work_dir, urls, extra_env=env)

    def analyze(self) -> None:
        """ANALYZE every service database on PostgreSQL (nothing to do on SQLite)."""
        if self.admin_url is None:
            return
        for db in self.databases:
            pg_admin(postgres_url(self.admin_url, database=db), "ANALYZE")

    def stop(self) -> None:
        try:
            self._stop_services()
        finally:
            for bp in (*self.null.values(), *self.kit.values()):
                bp.stop()
            if self.admin_url:
                for db in self.databases:
                    pg_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    def _stop_services(self) -> None:
        # SIGTERM all first, then wait, so the drains overlap.
        for sp in self.services.values():
            if sp.proc is not None and sp.proc.poll() is None:
                sp.proc.send_signal(signal.SIGTERM)
        for name, sp in self.services.items():
            if sp.proc is None:
                continue
            try:
                sp.terminate(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.stop_problems.append(
                    f"{name} did not exit within {STOP_TIMEOUT:.0f} s of SIGTERM; killed"
                )
                sp.kill()


def pg_admin(url: str, sql: str) -> None:
    """One statement (CREATE or DROP DATABASE, ANALYZE) on the bench's PostgreSQL server."""
    asyncio.run(postgres_execute(url, sql, connect_timeout=ADMIN_CONNECT_TIMEOUT))
