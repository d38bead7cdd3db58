"""compose.yaml cannot run here (no Docker engine); check what can be checked by reading it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bizmsg.kit.config import PORTS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return data


def test_four_services_and_postgres(compose: dict[str, Any]) -> None:
    assert set(PORTS) | {"postgres"} <= set(compose["services"])


@pytest.mark.parametrize("name", sorted(PORTS))
def test_service_shape(compose: dict[str, Any], name: str) -> None:
    svc = compose["services"][name]
    port = PORTS[name]
    assert svc["build"] == "." and (REPO / "Dockerfile").exists()
    assert svc["command"] == ["python", "-m", f"{name}_svc"]
    assert (REPO / f"{name}_svc" / "__main__.py").exists()
    assert f"{port}:{port}" in svc["ports"]
    env = svc["environment"]
    assert env[f"BIZMSG_{name.upper()}_PORT"] == str(port)
    assert env["BIZMSG_LISTEN_HOST"] == "0.0.0.0"
    # each service its own PostgreSQL database
    url = env[f"BIZMSG_{name.upper()}_DATABASE_URL"]
    assert url.startswith("postgresql+asyncpg://") and url.endswith(f"@postgres:5432/{name}")
    for other in PORTS:
        assert env[f"BIZMSG_{other.upper()}_TARGET"] == f"{other}:{PORTS[other]}"
    assert "BIZMSG_TOKEN_SECRET" in env
    # grpc.health.v1 health check through the image's own CLI
    assert svc["healthcheck"]["test"] == ["CMD", "bizmsg", "health", f"127.0.0.1:{port}"]
    assert svc["depends_on"]["db-init"]["condition"] == "service_completed_successfully"


def test_dependencies_wait_for_health(compose: dict[str, Any]) -> None:
    for name in ("delivery", "ads"):
        deps = compose["services"][name]["depends_on"]
        for dep in ("consent", "billing"):
            assert deps[dep]["condition"] == "service_healthy"


def test_database_init_creates_one_database_per_service(compose: dict[str, Any]) -> None:
    script = " ".join(compose["services"]["db-init"]["command"])
    for name in PORTS:
        assert name in script
    assert "postgres" in compose["services"]["postgres"]["image"]
    assert "healthcheck" in compose["services"]["postgres"]


def test_health_cli_reports_not_serving_for_nothing_listening() -> None:
    from bizmsg.cli import main
    from bizmsg.kit.testing import free_port

    assert main(["health", f"127.0.0.1:{free_port()}", "--timeout", "0.5"]) == 1
