"""Principals and signed bearer tokens.

A token is a JWT (HS256, PyJWT) whose subject names one principal — `user:<id>`,
`business:<id>`, `advertiser:<id>`, `service:<name>` or `admin` — with an expiry.
All services share the signing secret, so any of them can verify any token.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from bizmsg.kit.errors import Unauthenticated
from bizmsg.kit.validation import is_token

KINDS = ("user", "business", "advertiser", "service", "admin")


@dataclass(frozen=True)
class Principal:
    kind: str
    id: str = ""

    @classmethod
    def parse(cls, text: str) -> Principal:
        if text == "admin":
            return cls("admin", "")
        kind, sep, ident = text.partition(":")
        if not sep or kind not in KINDS or kind == "admin" or not ident or len(ident) > 128:
            raise ValueError(f"not a principal: {text!r}")
        if not is_token(ident):
            raise ValueError(f"not a principal: {text!r}")
        return cls(kind, ident)

    def __str__(self) -> str:
        return "admin" if self.kind == "admin" else f"{self.kind}:{self.id}"

    @property
    def is_admin(self) -> bool:
        return self.kind == "admin"

    def is_service(self, name: str | None = None) -> bool:
        return self.kind == "service" and (name is None or self.id == name)


ANONYMOUS = Principal("anonymous", "")
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "bizmsg_principal", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The authenticated caller of the RPC running in this task."""
    return _current.get()


def set_current_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


class TokenAuthority:
    """Mints and verifies bearer tokens with one shared HMAC secret."""

    ALGORITHM = "HS256"
    ISSUER = "bizmsg"

    CACHE_SIZE = 10_000

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("token secret must be at least 32 bytes")
        self._secret = secret
        # token -> (principal, expiry): a caller sends the same token on every call, so the
        # signature is checked once; the expiry is checked every time.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def mint(
        self,
        principal: Principal | str,
        *,
        ttl: timedelta = timedelta(days=1),
        now: datetime | None = None,
    ) -> str:
        p = principal if isinstance(principal, Principal) else Principal.parse(principal)
        issued = now or datetime.now(UTC)
        claims = {"sub": str(p), "iss": self.ISSUER, "iat": issued, "exp": issued + ttl}
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM)

    def verify(self, token: str) -> Principal:
        hit = self._verified.get(token)
        if hit is not None:
            if time.time() < hit[1]:
                return hit[0]
            del self._verified[token]
        principal, expiry = self._decode(token)
        if len(self._verified) >= self.CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = (principal, expiry)
        return principal

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.ALGORITHM],
                issuer=self.ISSUER,
                options={"require": ["sub", "exp", "iss"]},
            )
        except jwt.ExpiredSignatureError as e:
            raise Unauthenticated("TOKEN_EXPIRED", "the bearer token has expired") from e
        except jwt.InvalidSignatureError as e:
            raise Unauthenticated("TOKEN_INVALID", "the bearer token's signature is invalid") from e
        except jwt.PyJWTError as e:
            raise Unauthenticated("TOKEN_MALFORMED", "the bearer token is malformed") from e
        try:
            return Principal.parse(str(claims["sub"])), float(claims["exp"])
        except ValueError as e:
            raise Unauthenticated("TOKEN_MALFORMED", "the token names no valid principal") from e
