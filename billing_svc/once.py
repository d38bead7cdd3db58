"""request_id replay (AIP-155) for billing, on the kit's idempotency table and fingerprint,
with one statement less per call than the kit's lookup-then-insert: the key is claimed with
INSERT ... ON CONFLICT DO NOTHING in the transaction of the effect, and only when that finds
the key taken (a replay), or when the work fails, is the stored answer looked up. In a group
commit of several calls the keys go in together before the commit (Tx.save), and a replay
among them sends the batch round again call by call.

- New request_id: the work and the key commit together, or neither does.
- Replay: the claim finds the key (on PostgreSQL it first waits for a concurrent holder to
  commit or roll back), the transaction with the repeated work rolls back, and the stored
  answer is returned; other parameters give ALREADY_EXISTS (REQUEST_ID_REUSED).
- The work failing on a replay (say the first call spent the funds, or already captured) is
  answered from the store too; a failure with nothing stored is the caller's error, and
  nothing is recorded, so a retry after e.g. a top-up can succeed.
- `Retry` from the work (an in-memory cache found stale), or a unique index a concurrent
  writer won, rolls back and runs it again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message
from sqlalchemy import Table, and_, bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bizmsg.kit.auth import current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import AlreadyExists, DomainError, Unavailable
from bizmsg.kit.idempotency import fingerprint
from bizmsg.kit.prepared import Prepared, defers
from bizmsg.kit.storage import Database

Resp = TypeVar("Resp", bound=Message)
ATTEMPTS = 4


class Retry(Exception):
    """Raised by work whose in-memory view was stale: roll back and run it again."""


class _Replay(Exception):
    """The request_id was already answered: roll back the repeated work."""


class Tx:
    """What the work gets: the connection in its transaction, and `save` to claim the
    request_id early (before taking hot row locks, so a replay waits for nothing); the runner
    saves it otherwise."""

    def __init__(self, once: Once, conn: AsyncConnection, key: dict[str, Any]) -> None:
        self.conn = conn
        self._once = once
        self._key = key
        self.saved = False
        self._session: AsyncSession | None = None

    async def session(self) -> AsyncSession:
        """An ORM session in this transaction, for the calls that load rows as objects
        (accounts, rate cards); the hot paths use `conn`. It neither commits nor ends the
        transaction: the runner does."""
        if self._session is None:
            if not self.conn.in_transaction():
                await self.conn.begin()  # on SQLite this joins the batch's transaction
            self._session = AsyncSession(
                bind=self.conn, expire_on_commit=False, join_transaction_mode="rollback_only"
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def save(self, response: Message) -> None:
        params = {**self._key, "response": response.SerializeToString(deterministic=True)}
        if defers(self.conn):
            # In a group commit of several calls, the keys go in with the batch's other rows
            # just before the commit, as a plain INSERT: a replay fails there (IntegrityError),
            # the batch runs again call by call, and the claim below finds the key.
            await self._once.insert.execute_later(self.conn, [params])
        elif await self._once.claim.execute(self.conn, params) != 1:
            raise _Replay
        self.saved = True


class Once:
    def __init__(self, db: Database, table: Table, clock: Clock) -> None:
        self.db = db
        self.table = table
        self.clock = clock
        t = table
        self.claim = Prepared(
            sqlite.insert(t).on_conflict_do_nothing(),
            postgresql=postgresql.insert(t).on_conflict_do_nothing(),
        )
        self.insert = Prepared(t.insert())
        self._lookup = Prepared(
            select(t.c.fingerprint, t.c.response).where(
                and_(
                    t.c.principal == bindparam("principal"),
                    t.c.method == bindparam("method"),
                    t.c.request_id == bindparam("request_id"),
                )
            )
        )

    async def run(
        self,
        method: str,
        request: Message,
        response_type: type[Resp],
        work: Callable[[Tx], Awaitable[Resp]],
    ) -> Resp:
        key = {
            "principal": str(current_principal()),
            "method": method,
            "request_id": request.request_id,  # type: ignore[attr-defined]
            "fingerprint": fingerprint(request),
            "create_time": self.clock.now(),
        }

        async def attempt(conn: AsyncConnection) -> Resp:
            tx = Tx(self, conn, key)
            try:
                response = await work(tx)
                if not tx.saved:
                    await tx.save(response)
            finally:
                await tx.close()
            return response

        for _ in range(ATTEMPTS):
            try:
                # Group commit: concurrent calls share a transaction (see Database.write_batched).
                return await self.db.write_batched(attempt)
            except (Retry, IntegrityError):
                # A stale cache, or a concurrent writer won a unique index (the same wallet,
                # the same rate-card version): run again, now seeing what it committed.
                continue
            except _Replay:
                break
            except DomainError:
                stored = await self._stored(key, response_type)
                if stored is None:
                    raise
                return stored
        else:
            raise Unavailable(
                "BUSY", "the call kept meeting concurrent changes; retry", retry_after=1
            )
        stored = await self._stored(key, response_type)
        if stored is None:
            # The holder of the key rolled back after the claim waited for it: retry.
            raise Unavailable("CONFLICT", "a concurrent request with this request_id failed")
        return stored

    async def _stored(self, key: dict[str, Any], response_type: type[Resp]) -> Resp | None:
        async with self.db.read() as session:
            conn = await session.connection()
            params = {k: key[k] for k in ("principal", "method", "request_id")}
            row = await self._lookup.first(conn, params)
        if row is None:
            return None
        if row.fingerprint != key["fingerprint"]:
            raise AlreadyExists()
        return response_type.FromString(row.response)
