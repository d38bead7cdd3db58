"""Start-up, serving and graceful shutdown of one bizmsg service.

Order at start-up: logging, database + migrations, the service's own build(), then the
gRPC server with health and reflection; health turns SERVING only when all of that is
done. On SIGTERM/SIGINT: health NOT_SERVING, new calls refused, in-flight calls get
`BIZMSG_GRACE_SECONDS` to finish, background jobs stop, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from bizmsg.kit import logs
from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.clients import Channels, server_credentials
from bizmsg.kit.clock import Clock, OffsetFileClock, SystemClock
from bizmsg.kit.config import Settings
from bizmsg.kit.loop import loop_factory, tune_gc
from bizmsg.kit.storage import Database

log = logging.getLogger("bizmsg.server")


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    service_name: str
    add_servicer: Callable[[Any, grpc.aio.Server], None]
    build: Callable[[Runtime], Awaitable[Any]]
    migrations: str | None = None
    dependencies: tuple[str, ...] = ()


# SQLite's serving connections do not checkpoint (storage.py); the server does, this often.
CHECKPOINT_INTERVAL = 1.0


@dataclass
class Runtime:
    """What a service's build() gets: settings, clock, its database and its dependencies."""

    definition: ServiceDefinition
    settings: Settings
    clock: Clock
    db: Database
    tokens: TokenAuthority
    channels: Channels
    _jobs: list[tuple[float, Callable[[], Awaitable[None]], str]] = field(default_factory=list)
    _shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def channel(self, dependency: str) -> grpc.aio.Channel:
        if dependency not in self.definition.dependencies:
            raise ValueError(f"{self.definition.name} does not declare dependency {dependency!r}")
        return self.channels.get(dependency)

    def every(self, interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
        """Run `job` every `interval` seconds while serving; failures are logged, not fatal."""
        self._jobs.append((interval, job, name))

    def on_shutdown(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._shutdown.append(fn)

    def start_jobs(self) -> None:
        for interval, job, name in self._jobs:
            self._tasks.append(asyncio.create_task(_periodic(interval, job, name), name=name))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fn in reversed(self._shutdown):
            try:
                await fn()
            except Exception:
                log.exception("shutdown hook failed")
        await self.channels.close()
        await self.db.dispose()


async def _periodic(interval: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background job failed", extra={"fields": {"job": name}})
        await asyncio.sleep(interval)


def make_clock(settings: Settings) -> Clock:
    return OffsetFileClock(settings.clock_file) if settings.clock_file else SystemClock()


@dataclass
class RunningService:
    """A started service: its server, runtime and the port it listens on."""

    definition: ServiceDefinition
    server: grpc.aio.Server
    runtime: Runtime
    health: Any
    port: int
    interceptor: Any

    async def stop(self, grace: float) -> None:
        """Drain: NOT_SERVING, refuse new calls, let in-flight ones finish within `grace`."""
        self.interceptor.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.runtime.close()


async def start(
    definition: ServiceDefinition,
    settings: Settings,
    *,
    clock: Clock | None = None,
    port: int | None = None,
    dependency_targets: dict[str, str] | None = None,
) -> RunningService:
    from bizmsg.kit.interceptors import ServerInterceptor

    tokens = TokenAuthority(settings.token_secret)
    db = Database(settings.database_url(definition.name))
    if definition.migrations:
        await db.migrate(definition.migrations)
    channels = Channels(settings, definition.name, tokens)
    for dep, target in (dependency_targets or {}).items():
        channels.set_target(dep, target)
    runtime = Runtime(definition, settings, clock or make_clock(settings), db, tokens, channels)
    if db.dialect == "sqlite":
        runtime.every(CHECKPOINT_INTERVAL, db.checkpoint, "sqlite-checkpoint")
    servicer = await definition.build(runtime)

    interceptor = ServerInterceptor(definition.name, tokens)
    server = grpc.aio.server(
        interceptors=[interceptor],
        options=[("grpc.so_reuseport", 0)],
    )
    definition.add_servicer(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (definition.service_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.listen_host}:{settings.port(definition.name) if port is None else port}"
    tls = settings.tls
    bound = (
        server.add_secure_port(address, server_credentials(tls))
        if tls
        else server.add_insecure_port(address)
    )
    await server.start()
    runtime.start_jobs()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set(definition.service_name, serving)
    await health_servicer.set("", serving)
    log.info(
        "serving",
        extra={"fields": {"service": definition.service_name, "address": address, "port": bound}},
    )
    return RunningService(definition, server, runtime, health_servicer, bound, interceptor)


async def serve(definition: ServiceDefinition, settings: Settings) -> bool:
    """Serve until SIGTERM or SIGINT, then drain. False if some task would not stop."""
    running = await start(definition, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # A second signal while draining must not kill the process half-way: ignore it.
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    log.info("draining", extra={"fields": {"grace_seconds": settings.grace_seconds}})
    await running.stop(settings.grace_seconds)
    # Whatever is still running (a call cancelled mid-query, a client stream) gets a short
    # moment to unwind; asyncio.run would otherwise wait for it forever.
    me = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not me]
    for task in leftovers:
        task.cancel()
    stuck: set[asyncio.Task[Any]] = set()
    if leftovers:
        _, stuck = await asyncio.wait(leftovers, timeout=5)
    if stuck:
        log.warning(
            "tasks did not stop", extra={"fields": {"tasks": [t.get_name() for t in stuck]}}
        )
    log.info("stopped")
    return not stuck


def main(definition: ServiceDefinition) -> None:
    """Entry point of `python -m <service>_svc`."""
    settings = Settings()
    logs.configure(settings.log_level, definition.name)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(settings)) as runner:
        if not runner.run(serve(definition, settings)):
            # Drained and committed work is safe; do not hang on a task that ignores cancel.
            logging.shutdown()
            os._exit(0)
