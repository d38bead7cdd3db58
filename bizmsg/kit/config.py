"""Settings from environment variables, with defaults that run everything on one machine.

Every variable is listed in the README's configuration table. Service-specific knobs are
read through `env_int` / `env_float` / `env_str` so they share one naming scheme:
BIZMSG_<SERVICE>_<NAME>.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PORTS = {"consent": 50051, "delivery": 50052, "billing": 50053, "ads": 50054}
# Only for development: `bizmsg run` and the tests use it; production sets BIZMSG_TOKEN_SECRET.
DEV_TOKEN_SECRET = "bizmsg-development-token-secret-do-not-use-in-production"


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class Settings:
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    def _get(self, name: str, default: str) -> str:
        return self.env.get(name) or default

    @property
    def data_dir(self) -> Path:
        return Path(self._get("BIZMSG_DATA_DIR", ".data"))

    @property
    def listen_host(self) -> str:
        return self._get("BIZMSG_LISTEN_HOST", "127.0.0.1")

    @property
    def token_secret(self) -> bytes:
        return self._get("BIZMSG_TOKEN_SECRET", DEV_TOKEN_SECRET).encode()

    @property
    def log_level(self) -> str:
        return self._get("BIZMSG_LOG_LEVEL", "INFO").upper()

    @property
    def grace_seconds(self) -> float:
        return float(self._get("BIZMSG_GRACE_SECONDS", "10"))

    @property
    def call_timeout(self) -> float:
        """Default deadline of an outgoing call when the incoming one leaves more time."""
        return float(self._get("BIZMSG_CALL_TIMEOUT", "5"))

    @property
    def uvloop(self) -> bool:
        """Whether a service runs on uvloop (where installed) rather than asyncio's own loop.
        BIZMSG_UVLOOP=0 turns it off."""
        value = self._get("BIZMSG_UVLOOP", "1").strip().lower()
        return value not in ("0", "false", "no", "off")

    @property
    def internal_streams(self) -> bool:
        """Whether calls made for every request (delivery's CheckConsent and AuthorizeCharge) go as
        items on one long-lived stream per dependency (kit/multiplex.py) rather than one unary
        call each. BIZMSG_INTERNAL_STREAMS=0 turns them off; the unary methods serve either way."""
        value = self._get("BIZMSG_INTERNAL_STREAMS", "1").strip().lower()
        return value not in ("0", "false", "no", "off")

    @property
    def clock_file(self) -> str | None:
        return self.env.get("BIZMSG_CLOCK_FILE") or None

    @property
    def tls(self) -> TlsFiles | None:
        ca, cert, key = (self.env.get(f"BIZMSG_TLS_{n}") for n in ("CA", "CERT", "KEY"))
        if not (ca and cert and key):
            return None
        return TlsFiles(Path(ca), Path(cert), Path(key))

    def port(self, service: str) -> int:
        return int(self._get(f"BIZMSG_{service.upper()}_PORT", str(PORTS[service])))

    def target(self, service: str) -> str:
        """Where a dependency is reached (host:port)."""
        return self._get(f"BIZMSG_{service.upper()}_TARGET", f"127.0.0.1:{self.port(service)}")

    def database_url(self, service: str) -> str:
        default = f"sqlite+aiosqlite:///{self.data_dir.resolve() / (service + '.db')}"
        return self._get(f"BIZMSG_{service.upper()}_DATABASE_URL", default)

    def env_str(self, name: str, default: str) -> str:
        return self._get(name, default)

    def env_int(self, name: str, default: int) -> int:
        return int(self._get(name, str(default)))

    def env_float(self, name: str, default: float) -> float:
        return float(self._get(name, str(default)))
