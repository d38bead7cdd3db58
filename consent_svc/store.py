"""Storage of the consent service: queries only, no rules.

The hot paths (CheckConsent, RecordUserMessage, RecordBusinessReply and their request_id
replay) use statements built once, here, as SQLAlchemy Core with bind parameters, run on the
transaction's connection: no ORM unit of work, no statement building per call. CheckConsent's
single read goes one step further (see `RelationReader`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    LargeBinary,
    Row,
    Table,
    bindparam,
    case,
    delete,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from bizmsg.kit.clock import Clock
from bizmsg.kit.idempotency import forget
from bizmsg.kit.keyed_reads import KeyedReads
from bizmsg.kit.prepared import Prepared
from bizmsg.kit.storage import Database, UTCDateTime
from consent_svc.models import (
    ErasureAnswer,
    History,
    HistoryEvent,
    Person,
    PersonAnswer,
    Relation,
    ServiceKey,
    idempotency_keys,
)


async def load_secret(db: Database, clock: Clock, name: str, make: Callable[[], bytes]) -> bytes:
    """The named secret, made by whichever replica gets there first (insert-if-absent)."""
    insert = postgresql.insert if db.dialect == "postgresql" else sqlite.insert
    async with db.write() as s:
        stmt = insert(ServiceKey).values(name=name, secret=make(), create_time=clock.now())
        await s.execute(stmt.on_conflict_do_nothing(index_elements=["name"]))
    async with db.read() as s:
        return (
            await s.execute(select(ServiceKey.secret).where(ServiceKey.name == name))
        ).scalar_one()


async def relation(
    s: AsyncSession, person_hash: str, business_id: str, *, lock: bool = False
) -> Relation | None:
    return await s.get(Relation, (person_hash, business_id), with_for_update=lock)


async def person(s: AsyncSession, person_hash: str, *, lock: bool = False) -> Person | None:
    return await s.get(Person, person_hash, with_for_update=lock)


async def history(s: AsyncSession, history_id: str, *, lock: bool = False) -> History | None:
    return await s.get(History, history_id, with_for_update=lock)


async def relations_page(
    s: AsyncSession, person_hash: str, after_business: str, limit: int
) -> Sequence[Relation]:
    q = (
        select(Relation)
        .where(Relation.person_hash == person_hash, Relation.business_id > after_business)
        .order_by(Relation.business_id)
        .limit(limit)
    )
    return (await s.execute(q)).scalars().all()


async def events_page(
    s: AsyncSession, history_id: str, after_sequence: int, limit: int | None
) -> Sequence[HistoryEvent]:
    q = (
        select(HistoryEvent)
        .where(HistoryEvent.history_id == history_id, HistoryEvent.sequence > after_sequence)
        .order_by(HistoryEvent.sequence)
    )
    if limit is not None:
        q = q.limit(limit)
    return (await s.execute(q)).scalars().all()


async def delete_person_rows(s: AsyncSession, person_hash: str, principal: str) -> None:
    """Every row that identifies the person: their key, their relations, the answers stored for
    their own calls (kit table, by principal) and for delivery's calls about them (by hash)."""
    await s.execute(delete(Relation).where(Relation.person_hash == person_hash))
    await s.execute(delete(Person).where(Person.person_hash == person_hash))
    await forget(s, idempotency_keys, principal)
    await s.execute(delete(PersonAnswer).where(PersonAnswer.person_hash == person_hash))


async def erasure_answer(s: AsyncSession, key: str) -> ErasureAnswer | None:
    return await s.get(ErasureAnswer, key)


async def compact_sqlite(db: Database) -> None:
    """After an erasure on SQLite: fold the WAL (which still holds old page images) into the
    database file and truncate it, so the erased bytes are gone from disk too."""
    if db.dialect != "sqlite":
        return
    async with db.engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


async def secure_delete(s: AsyncSession, db: Database) -> None:
    """SQLite overwrites deleted content with zeros instead of leaving it in free space."""
    if db.dialect == "sqlite":
        await s.execute(text("PRAGMA secure_delete=ON"))


# --- hot paths ---------------------------------------------------------------------------------

# A result row of any shape (its columns are read by name or position).
Record = Row[*tuple[Any, ...]]

_R = cast(Table, Relation.__table__)
_P = cast(Table, Person.__table__)
_A = cast(Table, PersonAnswer.__table__)
# Bind names differ from column names: an INSERT/UPDATE reserves the latter.
_PK = (_R.c.person_hash == bindparam("ph")) & (_R.c.business_id == bindparam("biz"))

# What CheckConsent's rule reads, in this order (see decision.RelationState).
_STATE_COLUMNS = (
    _R.c.consent_id,
    _R.c.consent_version,
    _R.c.granted,
    _R.c.revoked,
    _R.c.consent_expire_time,
    _R.c.blocked,
    _R.c.service_expire_time,
    _R.c.entry_expire_time,
    _R.c.free_entry_expire_time,
)
_STATE = select(*_STATE_COLUMNS).where(_PK)
_STATE_FOR_UPDATE = _STATE.with_for_update()


class RelationReader:
    """CheckConsent's one read: one row by primary key, as one prepared statement on the
    driver (bizmsg.kit.prepared). On PostgreSQL the checks that arrive together (one write of
    delivery's stream carries several) read in one round trip (bizmsg.kit.keyed_reads): the
    statement runs once per key, pipelined (Prepared.rows_each), where each read cost a round
    trip of its own.

    No transaction is opened (Database.connect): a single SELECT is atomic and, in
    autocommit, reads the newest committed state when it starts (SQLite WAL: a fresh read
    snapshot per statement; PostgreSQL: READ COMMITTED's per-statement snapshot), so everything
    committed before it started, such as a revocation that has returned, is seen. A
    BEGIN/COMMIT around it would add two statements and guarantee nothing more.
    """

    _STATE = Prepared(_STATE)

    def __init__(self, db: Database) -> None:
        self._db = db
        self._together: KeyedReads[tuple[str, str], tuple[Any, ...]] | None = None
        if db.dialect == "postgresql":
            self._together = KeyedReads(self._states)

    async def state(self, person_hash: str, business_id: str) -> tuple[Any, ...] | None:
        if self._together is not None:
            return await self._together.get((person_hash, business_id))
        async with self._db.connect() as conn:
            row: tuple[Any, ...] | None = await self._STATE.first(
                conn, {"ph": person_hash, "biz": business_id}
            )
        return row

    async def _states(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
        params = [{"ph": ph, "biz": biz} for ph, biz in keys]
        async with self._db.connect() as conn:
            found = await self._STATE.rows_each(conn, params)
        return {key: rows[0] for key, rows in zip(keys, found, strict=True) if rows}


async def relation_state(
    conn: AsyncConnection, person_hash: str, business_id: str
) -> Record | None:
    """The same columns inside a write transaction, locked on PostgreSQL (SQLite serialises
    writers already)."""
    result = await conn.execute(_STATE_FOR_UPDATE, {"ph": person_hash, "biz": business_id})
    return result.first()


_DATA_KEY = select(_P.c.data_key).where(_P.c.person_hash == bindparam("ph"))


async def data_key(conn: AsyncConnection, person_hash: str) -> bytes | None:
    return cast(bytes | None, (await conn.execute(_DATA_KEY, {"ph": person_hash})).scalar())


_ANSWER = select(_A.c.fingerprint, _A.c.response).where(_A.c.key == bindparam("key"))
_INSERT_ANSWER = {
    name: insert(_A).on_conflict_do_nothing(index_elements=[_A.c.key]).returning(_A.c.key)
    for name, insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}


async def answer(conn: AsyncConnection, key: str) -> Record | None:
    return (await conn.execute(_ANSWER, {"key": key})).first()


async def save_answer(conn: AsyncConnection, values: dict[str, Any]) -> bool:
    """Stores an answer unless its key has one already; whether it did."""
    result = await conn.execute(_INSERT_ANSWER[conn.dialect.name], values)
    return result.first() is not None


def _user_message_upsert(insert: Any) -> Any:
    """A person's message: the relation made or its customer-service window extended, in one
    statement. Whether a referral arms the entry point is decided in SQL on the locked row, by
    windows.after_user_message's rule: only while no free-entry window is open."""
    now = bindparam("now", type_=UTCDateTime())
    service = bindparam("service", type_=UTCDateTime())
    entry = bindparam("entry", type_=UTCDateTime())
    referral = bindparam("referral", type_=LargeBinary())
    stmt = insert(_R).values(
        person_hash=bindparam("ph"),
        business_id=bindparam("biz"),
        last_user_message_time=now,
        service_expire_time=service,
        entry_expire_time=entry,
        entry_referral=referral,
        update_time=now,
    )
    free_entry_open = _R.c.free_entry_expire_time.is_not(None) & (_R.c.free_entry_expire_time > now)
    # No referral: entry and referral bind as NULL and the CASE keeps the stored ones.
    arm = entry.is_not(None) & ~free_entry_open
    return stmt.on_conflict_do_update(
        index_elements=[_R.c.person_hash, _R.c.business_id],
        set_={
            "last_user_message_time": now,
            "service_expire_time": service,
            "entry_expire_time": case((arm, entry), else_=_R.c.entry_expire_time),
            "entry_referral": case((arm, referral), else_=_R.c.entry_referral),
            "update_time": now,
        },
    ).returning(_R.c.service_expire_time, _R.c.entry_expire_time)


_USER_MESSAGE = {
    "sqlite": _user_message_upsert(sqlite.insert),
    "postgresql": _user_message_upsert(postgresql.insert),
}


async def record_user_message(
    conn: AsyncConnection, values: dict[str, Any]
) -> tuple[datetime | None, datetime | None]:
    """The relation's customer-service and entry-point expiry after the message."""
    row = (await conn.execute(_USER_MESSAGE[conn.dialect.name], values)).one()
    return row.service_expire_time, row.entry_expire_time


_REPLY_UPDATE = (
    _R.update()
    .where(_PK)
    .values(
        entry_expire_time=bindparam("entry", type_=UTCDateTime()),
        free_entry_expire_time=bindparam("free_entry", type_=UTCDateTime()),
        update_time=bindparam("now", type_=UTCDateTime()),
    )
)
_REPLY_UPDATE_CLEAR = _REPLY_UPDATE.values(entry_referral=None)


async def update_windows(
    conn: AsyncConnection, values: dict[str, Any], *, clear_referral: bool
) -> None:
    await conn.execute(_REPLY_UPDATE_CLEAR if clear_referral else _REPLY_UPDATE, values)
