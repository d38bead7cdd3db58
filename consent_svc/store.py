"""Storage of the consent service: queries only, no rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import delete, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.kit.clock import Clock
from bizmsg.kit.storage import Database
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
    await s.execute(delete(idempotency_keys).where(idempotency_keys.c.principal == principal))
    await s.execute(delete(PersonAnswer).where(PersonAnswer.person_hash == person_hash))


async def person_answer(s: AsyncSession, key: str) -> PersonAnswer | None:
    return await s.get(PersonAnswer, key)


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
