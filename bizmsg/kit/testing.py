"""Harnesses for tests: services in-process (ServiceThread) and as real processes (ServiceProcess).

Tests talk to both with plain synchronous grpc stubs, so they need no event loop of their own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from google.rpc import error_details_pb2
from sqlalchemy import event

from bizmsg.kit import prepared, sqlite_inline
from bizmsg.kit.auth import TokenAuthority
from bizmsg.kit.clock import Clock
from bizmsg.kit.config import DEV_TOKEN_SECRET, Settings
from bizmsg.kit.errors import status_details
from bizmsg.kit.processes import (  # re-exported for tests
    SERVICE_NAMES,
    ServiceProcess,
    free_port,
    start_stack,
    wait_serving,
)
from bizmsg.kit.server import RunningService, ServiceDefinition, start
from bizmsg.kit.storage import Database

TEST_SECRET = DEV_TOKEN_SECRET
_tokens = TokenAuthority(TEST_SECRET.encode())


# Statements that are not a call's work: counts of statements per call leave them out.
TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def is_transaction_control(sql: str) -> bool:
    return sql.lstrip().upper().startswith(TRANSACTION_CONTROL)


@contextmanager
def sql_statements(db: Database) -> Iterator[list[str]]:
    """The SQL statements a service's database sees while the block runs, transaction control
    (BEGIN, COMMIT, savepoints) left out: on SQLite every statement the driver runs, whether
    SQLAlchemy or bizmsg.kit.prepared sent it; on PostgreSQL what SQLAlchemy and
    bizmsg.kit.prepared send."""
    seen: list[str] = []

    def add(sql: str) -> None:
        if not is_transaction_control(sql):
            seen.append(" ".join(sql.split()))

    if db.dialect == "sqlite":
        with sqlite_inline.traced(db.path, add):
            yield seen
        return

    def on_execute(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        add(statement)

    engine = db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", on_execute)
    try:
        with prepared.traced(engine.pool, add):
            yield seen
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)


def token_for(principal: str) -> str:
    return _tokens.mint(principal)


def metadata_for(principal: str) -> list[tuple[str, str]]:
    """Call metadata carrying a valid bearer token for `principal`."""
    return [("authorization", f"Bearer {token_for(principal)}")]


def error_details(e: grpc.RpcError) -> dict[str, Any]:
    """The google.rpc details of a failed call, by type name (ErrorInfo, BadRequest, ...)."""
    return {type(d).DESCRIPTOR.name: d for d in status_details(e)}


@contextmanager
def expect_error(
    code: grpc.StatusCode, reason: str | None = None, *, domain: str | None = None
) -> Iterator[dict[str, Any]]:
    """Expect the block's call to fail with `code` and exactly one ErrorInfo (of `reason`,
    in `domain`); yields the details by type name, filled in when the block has failed."""
    got: dict[str, Any] = {}
    try:
        yield got
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        details = status_details(e)
        infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
        assert len(infos) == 1, f"expected exactly one ErrorInfo, got {infos}"
        got.update({type(d).DESCRIPTOR.name: d for d in details})
        if domain is not None:
            assert infos[0].domain == domain, infos[0]
        if reason is not None:
            assert infos[0].reason == reason, infos[0]
    else:
        raise AssertionError(f"expected {code}, the call succeeded")


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
    "error_details",
    "expect_error",
    "free_port",
    "metadata_for",
    "start_stack",
    "token_for",
    "wait_serving",
]
