"""One process stack per backend, shared by every delivery test.

The root conftest's `database_url_factory` is function-scoped (a fresh database per test);
starting four processes per test would cost minutes, so this fixture makes its own four
databases (one per service) once per backend, the same way, and drops them afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.conftest import _admin, _async_url, _require_postgres
from tests.delivery.helpers import SERVICES, ProcStack, Stack, process_stack


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def procs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcStack]:
    backend = str(request.param)
    if backend == "postgresql":
        _require_postgres()
    root = tmp_path_factory.mktemp(f"delivery-{backend}")
    created: list[str] = []
    urls: dict[str, str] = {}
    for name in SERVICES:
        if backend == "sqlite":
            urls[name] = f"sqlite+aiosqlite:///{root / (name + '.db')}"
        else:
            dbname = f"bizmsg_t_{name}_{uuid.uuid4().hex[:12]}"
            asyncio.run(_admin(f'CREATE DATABASE "{dbname}"'))
            created.append(dbname)
            urls[name] = _async_url(dbname)
    try:
        with process_stack(root, urls) as ps:
            yield ps
    finally:
        for dbname in created:
            asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))


@pytest.fixture
def st(procs: ProcStack) -> Stack:
    return procs.stack
