"""One process stack per backend, shared by every delivery test.

The root conftest's `database_url_factory` is function-scoped (a fresh database per test);
starting four processes per test would cost minutes, so this fixture makes its four databases
(one per service) once per backend with the same `databases` helper.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import _require_postgres, databases
from tests.delivery.helpers import SERVICES, ProcStack, Stack, process_stack


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def procs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcStack]:
    backend = str(request.param)
    if backend == "postgresql":
        _require_postgres()
    root = tmp_path_factory.mktemp(f"delivery-{backend}")
    with databases(backend, root) as make:
        urls = {name: make(name) for name in SERVICES}
        with process_stack(root, urls) as ps:
            yield ps


@pytest.fixture
def st(procs: ProcStack) -> Stack:
    return procs.stack
