"""request_id replay (AIP-155), once for every service.

The first successful call with a request_id stores its response in the same transaction
as its effect. A retry with the same id and the same parameters gets that response back
and has no second effect, also after a restart; the same id with other parameters is
ALREADY_EXISTS (REQUEST_ID_REUSED). Failed calls store nothing, so they can be retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, bindparam, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bizmsg.kit.auth import current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import AlreadyExists
from bizmsg.kit.prepared import Prepared
from bizmsg.kit.storage import Database, UTCDateTime

Resp = TypeVar("Resp", bound=Message)


def idempotency_table(metadata: MetaData) -> Table:
    return Table(
        "idempotency_keys",
        metadata,
        Column("principal", String(160), primary_key=True),
        Column("method", String(80), primary_key=True),
        Column("request_id", String(128), primary_key=True),
        Column("fingerprint", String(64), nullable=False),
        Column("response", LargeBinary, nullable=False),
        Column("create_time", UTCDateTime, nullable=False),
    )


async def forget(
    session: AsyncSession,
    table: Table,
    principal: str,
    method: str | None = None,
    request_id: str | None = None,
) -> None:
    """Drop stored answers: one request's (an answer that did not stand), or every answer of
    a principal (erasure)."""
    where = [table.c.principal == principal]
    if method is not None:
        where.append(table.c.method == method)
    if request_id is not None:
        where.append(table.c.request_id == request_id)
    await session.execute(delete(table).where(*where))


def fingerprint(request: Message) -> str:
    """A hash of the request's parameters, request_id excluded."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField("request_id")  # type: ignore[arg-type]
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


class Idempotency:
    def __init__(self, table: Table, clock: Clock) -> None:
        self.table = table
        self.clock = clock
        # Built once: Core statements with bind parameters stay in SQLAlchemy's compiled cache.
        t = table
        self._lookup = Prepared(
            select(t.c.fingerprint, t.c.response).where(
                t.c.principal == bindparam("principal"),
                t.c.method == bindparam("method"),
                t.c.request_id == bindparam("request_id"),
            )
        )
        self._insert = Prepared(t.insert())

    def key(self, method: str, request: Message) -> dict[str, str]:
        """The request_id's key (principal, method, request_id), for a statement that reads the
        stored answer along with other things (see `stored`)."""
        return {
            "principal": str(current_principal()),
            "method": method,
            "request_id": request.request_id,  # type: ignore[attr-defined]
        }

    async def lookup(
        self,
        session: AsyncSession | AsyncConnection,
        method: str,
        request: Message,
        response_type: type[Resp],
    ) -> Resp | None:
        """The stored response for this request_id, or None if it was never answered."""
        conn = session if isinstance(session, AsyncConnection) else await session.connection()
        row = await self._lookup.first(conn, self.key(method, request))
        if row is None:
            return None
        return self.stored(request, response_type, row.fingerprint, row.response)

    @staticmethod
    def stored(
        request: Message,
        response_type: type[Resp],
        fingerprint_: str | None,
        response: bytes | None,
    ) -> Resp | None:
        """What `lookup` returns, from a stored row's two columns read elsewhere (None, None
        when this request_id was never answered)."""
        if fingerprint_ is None or response is None:
            return None
        if fingerprint_ != fingerprint(request):
            raise AlreadyExists()
        return response_type.FromString(response)

    async def save(
        self,
        session: AsyncSession | AsyncConnection,
        method: str,
        request: Message,
        response: Message,
        *,
        later: bool = False,
    ) -> None:
        """Stores the answer. `later`: inside a group commit, with the other works' answers
        just before the commit (Prepared.execute_later); a twin request then fails there, and
        the batch runs again work by work, where it fails at once."""
        conn = session if isinstance(session, AsyncConnection) else await session.connection()
        row = {
            **self.key(method, request),
            "fingerprint": fingerprint(request),
            "response": response.SerializeToString(deterministic=True),
            "create_time": self.clock.now(),
        }
        await self._insert.write(conn, row, later=later)

    async def run(
        self,
        db: Database,
        method: str,
        request: Message,
        response_type: type[Resp],
        work: Callable[[AsyncSession], Awaitable[Resp]],
    ) -> Resp:
        """Answer from the store, or do `work` and store its response in one transaction."""
        for _ in range(2):
            try:
                async with db.write() as session:
                    stored = await self.lookup(session, method, request, response_type)
                    if stored is not None:
                        return stored
                    response = await work(session)
                    await self.save(session, method, request, response)
                    return response
            except IntegrityError:
                # A concurrent call with the same request_id committed first: replay its answer.
                continue
        async with db.read() as session:
            stored = await self.lookup(session, method, request, response_type)
        if stored is None:
            raise AlreadyExists("CONFLICT", "a concurrent request with this request_id failed")
        return stored
