"""Harnesses for tests: services in-process (ServiceThread) and as real processes (ServiceProcess).

Tests talk to both with plain synchronous grpc stubs, so they need no event loop of their own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any

from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.clock import Clock
from bizmsg.kit.config import DEV_TOKEN_SECRET, Settings
from bizmsg.kit.processes import (  # re-exported for tests
    SERVICE_NAMES,
    ServiceProcess,
    free_port,
    start_stack,
    wait_serving,
)
from bizmsg.kit.server import RunningService, ServiceDefinition, start

TEST_SECRET = DEV_TOKEN_SECRET
_tokens = TokenAuthority(TEST_SECRET.encode())


def token_for(principal: str) -> str:
    return _tokens.mint(principal)


def metadata_for(principal: str) -> list[tuple[str, str]]:
    """Call metadata carrying a valid bearer token for `principal`."""
    return [("authorization", f"Bearer {token_for(principal)}")]


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


__all__ = [
    "SERVICE_NAMES",
    "TEST_SECRET",
    "ServiceProcess",
    "ServiceThread",
    "free_port",
    "metadata_for",
    "start_stack",
    "token_for",
    "wait_serving",
]
