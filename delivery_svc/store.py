"""Storage of the delivery service: SQLAlchemy queries only, no rules.

Every function takes the caller's session or connection, so the domain modules decide what
goes into one transaction. The hot paths (send, ack, status changes, outbox) use SQLAlchemy
Core on the transaction's connection: one statement per step, RETURNING instead of a read
after a write, multi-row inserts. Hot queries are served by the indexes declared in models.py.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    BindParameter,
    Integer,
    Row,
    Table,
    bindparam,
    case,
    delete,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import aliased

from bizmsg.kit.keyed_reads import KeyedReads
from bizmsg.kit.prepared import Prepared, Tally, defers
from bizmsg.kit.storage import Database, UTCDateTime
from delivery_svc.models import (
    BusinessLimits,
    ConversationCount,
    ConversationStart,
    Device,
    Envelope,
    Message,
    OneTimePreKey,
    OutboxItem,
    RateCounter,
    Sender,
    StatusEvent,
    idempotency_keys,
)
from delivery_svc.policy import hour_window

# A result row of any shape (its columns are read by name).
Record = Row[*tuple[Any, ...]]

# The hot statements are built once, here, with bind parameters: a statement object keeps
# its cache key, so a call costs no statement building and no compilation (SQLAlchemy's
# compiled cache). Inserts take their rows as execute() parameters (a multi-row VALUES
# clause would be compiled anew on every call). Plain tables: no ORM processing per call.
_INSERT_MESSAGE = cast(Table, Message.__table__).insert()
_INSERT_ENVELOPES = cast(Table, Envelope.__table__).insert()
_INSERT_EVENTS = cast(Table, StatusEvent.__table__).insert()
_INSERT_OUTBOX = cast(Table, OutboxItem.__table__).insert()


def _insert(db: AsyncSession | AsyncConnection, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT (and RETURNING) on both backends."""
    dialect = db.dialect if isinstance(db, AsyncConnection) else db.get_bind().dialect
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# The hot INSERT ... ON CONFLICT statements, built per dialect (the clause is dialect-specific).
def _next_seq(insert: Any) -> Any:
    return (
        insert(Sender)
        .values(sender=bindparam("sender"), last_seq=1)
        .on_conflict_do_update(index_elements=["sender"], set_={"last_seq": Sender.last_seq + 1})
        .returning(Sender.last_seq)
    )


def _bump_counters(insert: Any, n: int) -> Any:
    """`n` counters (of limits.counters) bumped in one statement with fixed parameters."""
    rows = [
        {"key": bindparam(f"key{i}"), "window_start": bindparam(f"window{i}"), "count": 1}
        for i in range(n)
    ]
    return (
        insert(RateCounter)
        .values(rows)
        .on_conflict_do_update(
            index_elements=["window_start", "key"], set_={"count": RateCounter.count + 1}
        )
        .returning(RateCounter.key, RateCounter.count)
    )


def _bump_pair_later(insert: Any) -> Any:
    """A pair counter's +1 for a group commit's flush (execute_later), refused there past
    `limit`: the refused count is NULL, which the NOT NULL column rejects (IntegrityError), so
    the batch runs again work by work, where each send bumps at once and learns its count."""
    limit = bindparam("limit", type_=Integer)

    def fits(count: Any) -> Any:
        return case((count <= limit, count), else_=null())

    return (
        insert(RateCounter)
        .values(
            window_start=bindparam("window_start"), key=bindparam("key"), count=fits(literal(1))
        )
        .on_conflict_do_update(
            index_elements=["window_start", "key"], set_={"count": fits(RateCounter.count + 1)}
        )
    )


def _start_conversation(insert: Any) -> Any:
    now = bindparam("now", type_=UTCDateTime())
    return (
        insert(ConversationStart)
        .values(
            business_id=bindparam("business_id"), person_id=bindparam("person_id"), start_time=now
        )
        .on_conflict_do_update(
            index_elements=["business_id", "person_id"],
            set_={"start_time": now},
            where=ConversationStart.start_time <= bindparam("since", type_=UTCDateTime()),
        )
        .returning(ConversationStart.start_time)
    )


def _count_conversation(insert: Any) -> Any:
    return (
        insert(ConversationCount)
        .values(business_id=bindparam("business_id"), hour_start=bindparam("hour_start"), count=1)
        .on_conflict_do_update(
            index_elements=["business_id", "hour_start"],
            set_={"count": ConversationCount.count + 1},
        )
        .returning(ConversationCount.count)
    )


def _prepared(build: Callable[[Any], Any]) -> Prepared:
    return Prepared(build(sqlite.insert), postgresql=build(postgresql.insert))


# What every send runs (see bizmsg.kit.prepared: straight on the driver).
_P_NEXT_SEQ = _prepared(_next_seq)
_P_BUMP_COUNTERS = {n: _prepared(functools.partial(_bump_counters, n=n)) for n in (1, 2)}
_P_BUMP_PAIR_LATER = _prepared(_bump_pair_later)
# Within a group commit a rate counter (and a sender's sequence, _SEQS) is read once and then
# counted in memory (Tally): in a business's burst every send of a batch adds to the same rows.
_COUNTS = Tally(
    Prepared(
        update(RateCounter)
        .where(
            (RateCounter.key == bindparam("key"))
            & (RateCounter.window_start == bindparam("window_start"))
        )
        .values(count=bindparam("count"))
    ),
    ("key", "window_start"),
    "count",
)
_P_START_CONVERSATION = _prepared(_start_conversation)
_P_COUNT_CONVERSATION = _prepared(_count_conversation)
# A business's new conversations of one hour: counted in memory within a group commit.
_HOURS = Tally(
    Prepared(
        update(ConversationCount)
        .where(
            (ConversationCount.business_id == bindparam("business"))
            & (ConversationCount.hour_start == bindparam("hour"))
        )
        .values(count=bindparam("n"))
    ),
    ("business", "hour"),
    "n",
)
_P_HOURS_SINCE = Prepared(
    select(ConversationCount.hour_start, ConversationCount.count).where(
        (ConversationCount.business_id == bindparam("business_id"))
        & (ConversationCount.hour_start >= bindparam("since_hour"))
    )
)
_STARTED_AFTER = (ConversationStart.business_id == bindparam("business_id")) & (
    ConversationStart.start_time > bindparam("after", type_=UTCDateTime())
)
_P_STARTS_BEFORE = Prepared(
    select(func.count()).where(
        _STARTED_AFTER & (ConversationStart.start_time < bindparam("before", type_=UTCDateTime()))
    )
)
_P_OLDEST_START = Prepared(select(func.min(ConversationStart.start_time)).where(_STARTED_AFTER))
_P_INSERT_MESSAGE = Prepared(_INSERT_MESSAGE)
_P_INSERT_ENVELOPES = Prepared(_INSERT_ENVELOPES)
_P_INSERT_EVENTS = Prepared(_INSERT_EVENTS)


# --- key directory ---------------------------------------------------------------------------


async def get_device(session: AsyncSession, owner: str, device_id: str) -> Device | None:
    return await session.get(Device, (owner, device_id))


async def list_devices(session: AsyncSession, owner: str, device_id: str = "") -> list[Device]:
    q = select(Device).where(Device.owner == owner)
    if device_id:
        q = q.where(Device.device_id == device_id)
    return list((await session.scalars(q.order_by(Device.device_id))).all())


async def put_device(
    session: AsyncSession,
    owner: str,
    device_id: str,
    identity_key: bytes,
    signed_pre_key: bytes,
    signature: bytes,
    country_code: str,
    now: datetime,
) -> bool:
    """Create or update a device; a new identity key drops the old one-time prekeys.
    Returns True when an existing device got a new identity key."""
    device = await session.get(Device, (owner, device_id), with_for_update=True)
    if device is None:
        session.add(
            Device(
                owner=owner,
                device_id=device_id,
                identity_key=identity_key,
                signed_pre_key=signed_pre_key,
                signed_pre_key_signature=signature,
                country_code=country_code,
                update_time=now,
            )
        )
        await session.flush()
        return False
    replaced = device.identity_key != identity_key
    if replaced:
        await session.execute(
            delete(OneTimePreKey).where(
                OneTimePreKey.owner == owner, OneTimePreKey.device_id == device_id
            )
        )
    device.identity_key = identity_key
    device.signed_pre_key = signed_pre_key
    device.signed_pre_key_signature = signature
    if country_code:
        device.country_code = country_code
    device.update_time = now
    await session.flush()
    return replaced


async def add_pre_keys(
    session: AsyncSession, owner: str, device_id: str, keys: Sequence[bytes]
) -> None:
    """Adds one-time prekeys; keys the device already has are skipped."""
    if not keys:
        return
    stmt = _insert(session, OneTimePreKey).values(
        [{"owner": owner, "device_id": device_id, "public_key": k} for k in keys]
    )
    await session.execute(stmt.on_conflict_do_nothing())


async def count_pre_keys(session: AsyncSession, owner: str, device_id: str) -> int:
    q = select(func.count()).where(
        OneTimePreKey.owner == owner, OneTimePreKey.device_id == device_id
    )
    return int((await session.execute(q)).scalar_one())


async def take_pre_key(session: AsyncSession, owner: str, device_id: str) -> bytes | None:
    """Removes and returns the device's oldest one-time prekey, each to one caller only.

    PostgreSQL: the row is locked with SKIP LOCKED, so concurrent fetches take different
    keys instead of waiting; SQLite: write transactions are serialised already.
    """
    row = (
        await session.execute(
            select(OneTimePreKey.id, OneTimePreKey.public_key)
            .where(OneTimePreKey.owner == owner, OneTimePreKey.device_id == device_id)
            .order_by(OneTimePreKey.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        )
    ).first()
    if row is None:
        return None
    await session.execute(delete(OneTimePreKey).where(OneTimePreKey.id == row.id))
    return bytes(row.public_key)


# The columns of a recipient's devices that a send needs: which exist, and the country.
_DEVICE_COLUMNS = (Device.device_id, Device.country_code, Device.update_time)
_RECIPIENT = Device.owner == bindparam("owner")


def _located(rows: Sequence[Record]) -> tuple[set[str], str]:
    """Device ids, and the country of the most recently registered device that names one
    (like a phone number's)."""
    located = [r for r in rows if r.country_code]
    country = max(located, key=lambda r: r.update_time).country_code if located else ""
    return {r.device_id for r in rows}, str(country)


async def recipient_devices(conn: AsyncConnection, owner: str) -> tuple[set[str], str]:
    """The owner's device ids and its country: one primary-key range read."""
    return _located(await _P_DEVICES.rows(conn, {"owner": owner}))


_DEVICE_EXISTS = select(literal(1)).where(
    Device.owner == bindparam("owner"), Device.device_id == bindparam("device_id")
)


async def device_exists(conn: AsyncConnection, owner: str, device_id: str) -> bool:
    params = {"owner": owner, "device_id": device_id}
    return (await conn.execute(_DEVICE_EXISTS, params)).first() is not None


# --- limits ----------------------------------------------------------------------------------


async def get_limits(conn: AsyncConnection, business_id: str) -> Record | None:
    q = select(BusinessLimits.messages_per_second, BusinessLimits.tier).where(
        BusinessLimits.business_id == business_id
    )
    return (await conn.execute(q)).first()


async def put_limits(
    session: AsyncSession, business_id: str, messages_per_second: int, tier: int, now: datetime
) -> None:
    stmt = _insert(session, BusinessLimits).values(
        business_id=business_id, messages_per_second=messages_per_second, tier=tier, update_time=now
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["business_id"],
            set_={"messages_per_second": messages_per_second, "tier": tier, "update_time": now},
        )
    )


@dataclass(frozen=True)
class LimitState:
    """What the limits of one send depend on, read in one statement."""

    messages_per_second: int | None  # None: the business has no row (defaults apply)
    tier: int | None
    second_count: int
    pair_count: int
    conversation_start: datetime | None


_BUSINESS = BusinessLimits.business_id == bindparam("business_id")
# A recipient's devices with, on every row, what the limits of a send to them depend on:
# the business's configured limits, its per-second and per-pair counters and when its
# conversation with the person started, and the send's stored answer (primary-key lookups as
# outer joins: one lookup per table, where scalar subqueries took one per column).
_DEVICES = select(*_DEVICE_COLUMNS).where(_RECIPIENT)
_IDEM = idempotency_keys
_ANSWERED = (
    (_IDEM.c.principal == bindparam("answered_principal"))
    & (_IDEM.c.method == bindparam("answered_method"))
    & (_IDEM.c.request_id == bindparam("answered_request_id"))
)
_SECOND = aliased(RateCounter)
_PAIR = aliased(RateCounter)
_DEVICES_AND_LIMITS = (
    select(
        *_DEVICE_COLUMNS,
        # SendMessage's stored answer for this request_id, if any (Idempotency.stored judges
        # it): the replay check rides on this statement instead of a statement of its own.
        _IDEM.c.fingerprint.label("answered_fingerprint"),
        _IDEM.c.response.label("answered_response"),
        BusinessLimits.messages_per_second,
        BusinessLimits.tier,
        _SECOND.count.label("second_count"),
        _PAIR.count.label("pair_count"),
        ConversationStart.start_time.label("conversation_start"),
    )
    .select_from(Device)
    # Each join matches at most one row (its whole primary key is given), so a device row is
    # never repeated; a missing row leaves its columns NULL.
    .outerjoin(_IDEM, _ANSWERED)
    .outerjoin(BusinessLimits, _BUSINESS)
    .outerjoin(
        _SECOND,
        (_SECOND.key == bindparam("second_key")) & (_SECOND.window_start == bindparam("second")),
    )
    .outerjoin(
        _PAIR, (_PAIR.key == bindparam("pair_key")) & (_PAIR.window_start == bindparam("minute"))
    )
    .outerjoin(
        ConversationStart,
        (ConversationStart.business_id == bindparam("business_id"))
        & (ConversationStart.person_id == bindparam("person_id")),
    )
    .where(_RECIPIENT)
)


_P_DEVICES = Prepared(_DEVICES)
_P_DEVICES_AND_LIMITS = Prepared(_DEVICES_AND_LIMITS)


@dataclass(frozen=True)
class Recipient:
    """What a business's send reads before it calls anyone (RecipientReader)."""

    devices: set[str]
    country: str
    limits: LimitState | None  # None when the recipient has no device
    # The stored answer's (fingerprint, response) for the send's request_id: (None, None) when
    # never answered; None when the recipient has no device (no row carried it).
    answered: tuple[str | None, bytes | None] | None


# Loop turns a batch of send reads waits while more sends keep arriving (quiet, most;
# bizmsg.kit.loop.gather_arrivals). Sends are incoming RPCs of their own and arrive one by
# one: the reads of one turn were batches of one (20,380 of 21,500 at c=128, 1.07 reads a
# round trip), and with (2, 8) still; with (8, 32) 4.6 a round trip. Three alternated
# `bizmsg bench --database-url ... --only null,send --levels 128` pairs: SendMessage / null
# 0.76, 0.73, 0.81 against 0.69, 0.65, 0.59, delivery 0.51-0.52 against 0.56-0.77 ms of CPU per
# message, PostgreSQL 0.21 against 0.24-0.34. (16, 64), as the stream writers wait, against
# (8, 32), three alternated `--levels 64,128` pairs: 0.91, 0.86, 0.85 against 0.81, 0.79, 0.78
# at c=128, 0.79, 0.73, 0.70 against 0.69, 0.62, 0.67 at c=64.
READ_GATHER = (16, 64)


class RecipientReader:
    """A business's send's one read before it calls anyone: the recipient's device ids and
    country (as recipient_devices), the limit state of a send from the business to the person
    and the send's stored answer, in one statement. On PostgreSQL the sends that arrive within
    a few turns of the loop read together (bizmsg.kit.keyed_reads, READ_GATHER), in one round
    trip: the statement runs once per send, pipelined (Prepared.rows_each), each run with its
    own generic plan of primary-key probes. (A single statement over arrays of the sends' keys
    was slower: PostgreSQL planned it anew on every execution while the arrays were short.) On
    SQLite, where a read runs inline, each send reads alone."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._together: KeyedReads[_ReadKey, Sequence[Record]] | None = None
        if db.dialect == "postgresql":
            self._together = KeyedReads(self._each, gather=READ_GATHER)

    async def recipient_and_limits(
        self,
        owner: str,
        business_id: str,
        person_id: str,
        counters: tuple[tuple[str, int], tuple[str, int]],
        answered_key: Mapping[str, str],
    ) -> Recipient:
        """`answered_key` is the send's idempotency key (Idempotency.key)."""
        (second_key, second), (pair_key, minute) = counters
        key: _ReadKey = (
            owner,
            business_id,
            person_id,
            second_key,
            second,
            pair_key,
            minute,
            *(answered_key[name] for name in _ANSWERED_KEY),
        )
        if self._together is not None:
            rows = await self._together.get(key) or ()
        else:
            async with self._db.connect() as conn:
                rows = await _P_DEVICES_AND_LIMITS.rows(conn, _read_params(key))
        return _recipient(rows)

    async def _each(self, keys: list[_ReadKey]) -> dict[_ReadKey, Sequence[Record]]:
        async with self._db.connect() as conn:
            found = await _P_DEVICES_AND_LIMITS.rows_each(conn, [_read_params(k) for k in keys])
        return dict(zip(keys, found, strict=True))


# A send's read's parameters, in the order of _READ_PARAMS (hashable: reads with the same
# key share their rows).
_ReadKey = tuple[Any, ...]
_ANSWERED_KEY = ("principal", "method", "request_id")
_READ_PARAMS = (
    "owner",
    "business_id",
    "person_id",
    "second_key",
    "second",
    "pair_key",
    "minute",
    *(f"answered_{name}" for name in _ANSWERED_KEY),
)


def _read_params(key: _ReadKey) -> dict[str, Any]:
    return dict(zip(_READ_PARAMS, key, strict=True))


def _recipient(rows: Sequence[Record]) -> Recipient:
    devices, country = _located(rows)
    if not rows:
        return Recipient(devices, country, None, None)
    r = rows[0]
    state = LimitState(
        r.messages_per_second,
        r.tier,
        int(r.second_count or 0),
        int(r.pair_count or 0),
        r.conversation_start,
    )
    return Recipient(devices, country, state, (r.answered_fingerprint, r.answered_response))


async def counter(session: AsyncSession, key: str, window_start: int) -> int:
    q = select(RateCounter.count).where(
        RateCounter.key == key, RateCounter.window_start == window_start
    )
    return int((await session.execute(q)).scalar_one_or_none() or 0)


async def bump_counter(session: AsyncSession, key: str, window_start: int) -> None:
    stmt = _insert(session, RateCounter).values(key=key, window_start=window_start, count=1)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["window_start", "key"], set_={"count": RateCounter.count + 1}
        )
    )


async def bump_counters(
    conn: AsyncConnection,
    counters: tuple[tuple[str, int], tuple[str, int]],
    pair_limit: int,
) -> dict[str, int]:
    """Adds one to a send's two (key, window) counters, the business's per second and the
    pair's per minute (in one statement, for those not held in this group commit); the new
    counts. In a group commit of several sends, the pair's count (a row per person, so rarely
    shared within a batch) is not returned: its +1 goes in with the batch's rows before the
    commit, checked there against `pair_limit`."""
    counts: dict[str, int] = {}
    missing: list[tuple[str, int]] = []
    now: tuple[tuple[str, int], ...] = counters
    if defers(conn):
        (pair_key, minute) = counters[1]
        pair = {"window_start": minute, "key": pair_key, "limit": pair_limit}
        await _P_BUMP_PAIR_LATER.execute_later(conn, [pair])
        now = counters[:1]
    for counter in now:
        count = _COUNTS.add(conn, counter)
        if count is None:
            missing.append(counter)
        else:
            counts[counter[0]] = count
    if missing:
        params: dict[str, Any] = {}
        for i, (key, window) in enumerate(missing):
            params[f"key{i}"] = key
            params[f"window{i}"] = window
        windows = dict(missing)
        for key, count in await _P_BUMP_COUNTERS[len(missing)].rows(conn, params):
            counts[key] = count = int(count)
            _COUNTS.hold(conn, (key, windows[key]), count)
    return counts


async def drop_counters_before(session: AsyncSession, window_start: int) -> None:
    await session.execute(delete(RateCounter).where(RateCounter.window_start < window_start))


async def count_conversation(conn: AsyncConnection, business_id: str, hour: int) -> None:
    """Counts a new conversation of the business in the hour starting at `hour` (epoch s)."""
    key = (business_id, hour)
    if _HOURS.add(conn, key) is None:
        params = {"business_id": business_id, "hour_start": hour}
        (count,) = await _P_COUNT_CONVERSATION.first(conn, params)
        _HOURS.hold(conn, key, int(count))


async def people_since(
    conn: AsyncConnection, business_id: str, since: datetime, *, exact_above: int
) -> int:
    """How many people the business started conversations with after `since`, from its hourly
    counts (count_conversation). The hour `since` falls in also counts its starts before
    `since`, so the sum is an upper bound; when it is above `exact_above`, that hour's starts
    after `since` are counted instead (an index range of one hour of conversation_starts), and
    the figure is exact. A person counts once: a conversation starts again only after the
    period, from an hour that is over by then."""
    since_hour = hour_window(since.timestamp())
    rows = await _P_HOURS_SINCE.rows(conn, {"business_id": business_id, "since_hour": since_hour})
    hours: dict[int, int] = {}
    for hour, count in rows:
        # This group commit's count, where it holds one, is newer than the row.
        held = _HOURS.held(conn, (business_id, hour))
        hours[int(hour)] = int(count) if held is None else held
    people = sum(hours.values())
    if people > exact_above and since_hour in hours:
        params = {
            "business_id": business_id,
            "after": since,
            "before": datetime.fromtimestamp(since_hour + 3600, UTC),
        }
        (in_first_hour,) = await _P_STARTS_BEFORE.first(conn, params)
        people += int(in_first_hour) - hours[since_hour]
    return people


async def oldest_start(conn: AsyncConnection, business_id: str, since: datetime) -> datetime | None:
    """The business's oldest conversation start after `since` (one index probe)."""
    row = await _P_OLDEST_START.first(conn, {"business_id": business_id, "after": since})
    return None if row is None else row[0]


async def drop_conversation_counts_before(session: AsyncSession, hour: int) -> None:
    await session.execute(delete(ConversationCount).where(ConversationCount.hour_start < hour))


async def start_conversation(
    conn: AsyncConnection, business_id: str, person_id: str, now: datetime, since: datetime
) -> bool:
    """Records that the business starts a conversation with the person now, unless one started
    after `since` already; True when this one is new (it counts toward the tier)."""
    params = {"business_id": business_id, "person_id": person_id, "now": now, "since": since}
    return await _P_START_CONVERSATION.first(conn, params) is not None


# --- messages and status events --------------------------------------------------------------


async def next_seq(conn: AsyncConnection, sender: str) -> int:
    """Takes the sender's next status sequence number; the row stays locked (PostgreSQL)
    until the transaction ends, so sequences are gap-free in commit order. Creates the row
    on first use."""
    key = (sender,)
    seq = _SEQS.add(conn, key)
    if seq is None:
        seq = int((await _P_NEXT_SEQ.rows(conn, {"sender": sender}))[0][0])
        _SEQS.hold(conn, key, seq)
    return seq


_LOCK_SENDERS = (
    select(Sender.sender, Sender.last_seq)
    .where(Sender.sender.in_(bindparam("senders", expanding=True)))
    .order_by(Sender.sender)
    .with_for_update()
)
_SET_LAST_SEQ = (
    update(Sender).where(Sender.sender == bindparam("name")).values(last_seq=bindparam("seq"))
)
_SEQS = Tally(Prepared(_SET_LAST_SEQ), ("name",), "seq")


async def lock_senders(conn: AsyncConnection, senders: Iterable[str]) -> dict[str, int]:
    """Locks the senders' rows (in sorted order, the order every writer locks in) until the
    transaction ends; returns each one's last sequence number. Every sender of a stored
    message has its row (the send created it)."""
    names = sorted(set(senders))
    if not names:
        return {}
    rows = (await conn.execute(_LOCK_SENDERS, {"senders": names})).all()
    return {str(s): int(n) for s, n in rows}


async def set_last_seq(conn: AsyncConnection, seqs: Mapping[str, int]) -> None:
    for sender, seq in seqs.items():
        await conn.execute(_SET_LAST_SEQ, {"name": sender, "seq": seq})


async def add_events(conn: AsyncConnection, events: Sequence[Mapping[str, Any]]) -> None:
    """Inserts status events (sender, seq, message_id, recipient, status, event_time, reason)."""
    await _P_INSERT_EVENTS.execute_many(conn, events)


async def add_sent_message(
    conn: AsyncConnection,
    message: Mapping[str, Any],
    envelopes: Sequence[Mapping[str, Any]],
    event: Mapping[str, Any],
) -> None:
    """A new message, its envelopes and its ACCEPTED event: deferred inside a group commit, so
    that the batch's messages go in with one statement per table (nothing in a send's
    transaction reads them back)."""
    await _P_INSERT_MESSAGE.execute_later(conn, [message])
    await _P_INSERT_ENVELOPES.execute_later(conn, envelopes)
    await _P_INSERT_EVENTS.execute_later(conn, [event])


async def events_after(
    conn: AsyncConnection, sender: str, after_seq: int, message_id: str, limit: int
) -> Sequence[Record]:
    q = select(
        StatusEvent.seq,
        StatusEvent.message_id,
        StatusEvent.recipient,
        StatusEvent.status,
        StatusEvent.event_time,
        StatusEvent.reason,
    ).where(StatusEvent.sender == sender, StatusEvent.seq > after_seq)
    if message_id:
        q = q.where(StatusEvent.message_id == message_id)
    q = q.order_by(StatusEvent.seq).limit(limit)
    return (await conn.execute(q)).all()


# The columns a status change needs of a message.
_STATE = (
    Message.message_id,
    Message.sender,
    Message.recipient,
    Message.status,
    Message.authorization_id,
)


_IDS: BindParameter[Any] = bindparam("ids", expanding=True)
_DEVICE_ENVELOPES = (
    Envelope.recipient == bindparam("owner"),
    Envelope.device_id == bindparam("device_id"),
)
_GET_MESSAGES = select(*_STATE).where(Message.message_id.in_(_IDS)).order_by(Message.message_id)
_ALL_WAITING = (
    select(*_STATE)
    .join(Envelope, Envelope.message_id == Message.message_id)
    .where(*_DEVICE_ENVELOPES)
    .order_by(Message.message_id)
)
_WAITING = _ALL_WAITING.where(Envelope.message_id.in_(_IDS))


async def get_messages(conn: AsyncConnection, message_ids: Sequence[str]) -> Sequence[Record]:
    """message_id, sender, recipient, status and authorization_id of these messages."""
    return (await conn.execute(_GET_MESSAGES, {"ids": list(message_ids)})).all()


async def waiting_messages(
    conn: AsyncConnection, recipient: str, device_id: str, message_ids: Sequence[str] | None
) -> Sequence[Record]:
    """The messages (state columns) that still have an envelope for this device; all of them,
    or those among `message_ids`."""
    params: dict[str, Any] = {"owner": recipient, "device_id": device_id}
    if message_ids is None:
        return (await conn.execute(_ALL_WAITING, params)).all()
    return (await conn.execute(_WAITING, {**params, "ids": list(message_ids)})).all()


async def mailbox(
    conn: AsyncConnection, recipient: str, device_id: str, now: datetime, limit: int
) -> Sequence[Record]:
    """Envelopes waiting for one device, oldest first, of messages not yet expired."""
    q = (
        select(
            Envelope.ciphertext,
            Message.message_id,
            Message.sender,
            Message.sender_device_id,
            Message.category,
            Message.send_time,
            Message.expire_time,
            Message.referral_click_id,
            Message.referral_campaign_id,
        )
        .join(Message, Message.message_id == Envelope.message_id)
        .where(
            Envelope.recipient == recipient,
            Envelope.device_id == device_id,
            Envelope.expire_time > now,
        )
        .order_by(Envelope.id)
        .limit(limit)
    )
    return (await conn.execute(q)).all()


_DELETE_ALL_ENVELOPES = delete(Envelope).where(*_DEVICE_ENVELOPES).returning(Envelope.message_id)
_DELETE_ENVELOPES = _DELETE_ALL_ENVELOPES.where(Envelope.message_id.in_(_IDS))


async def delete_envelopes(
    conn: AsyncConnection, recipient: str, device_id: str, message_ids: Sequence[str] | None
) -> list[str]:
    """Deletes the device's envelopes (all, or of these messages); returns the message ids."""
    params: dict[str, Any] = {"owner": recipient, "device_id": device_id}
    if message_ids is None:
        result = await conn.execute(_DELETE_ALL_ENVELOPES, params)
    else:
        result = await conn.execute(_DELETE_ENVELOPES, {**params, "ids": list(message_ids)})
    return [str(m) for m in result.scalars()]


async def messages_with_envelopes(conn: AsyncConnection, message_ids: Sequence[str]) -> set[str]:
    q = select(Envelope.message_id).where(Envelope.message_id.in_(list(message_ids))).distinct()
    return {str(m) for m in (await conn.execute(q)).scalars()}


async def delete_all_envelopes(conn: AsyncConnection, message_ids: Sequence[str]) -> None:
    if message_ids:
        await conn.execute(delete(Envelope).where(Envelope.message_id.in_(list(message_ids))))


async def delete_expired_envelopes(session: AsyncSession, now: datetime) -> None:
    """Ciphertext other devices never fetched, of messages past their TTL."""
    await session.execute(delete(Envelope).where(Envelope.expire_time <= now))


_MOVE_STATUSES = (
    update(Message)
    .where(Message.message_id.in_(_IDS), Message.status == bindparam("from_status"))
    .values(status=bindparam("to"), status_time=bindparam("now", type_=UTCDateTime()))
    .returning(Message.message_id)
)


async def move_statuses(
    conn: AsyncConnection,
    message_ids: Sequence[str],
    from_status: int,
    to_status: int,
    now: datetime,
) -> set[str]:
    """Compare-and-set of messages' status; returns those moved (others were moved first)."""
    if not message_ids:
        return set()
    params = {"ids": list(message_ids), "from_status": from_status, "to": to_status, "now": now}
    return {str(m) for m in (await conn.execute(_MOVE_STATUSES, params)).scalars()}


async def due_for_expiry(
    conn: AsyncConnection, status: int, now: datetime, limit: int
) -> list[str]:
    q = (
        select(Message.message_id)
        .where(Message.status == status, Message.expire_time <= now)
        .order_by(Message.expire_time)
        .limit(limit)
    )
    return [str(m) for m in (await conn.execute(q)).scalars()]


async def cleanup_due(
    conn: AsyncConnection, now: datetime, counters_before: int, hours_before: int
) -> bool:
    """Whether expired ciphertext, stale rate counters or hourly conversation counts older
    than the unique-people period are waiting to be deleted (index probes, so an idle sweep
    does not take the write lock)."""
    q = select(
        select(literal(1)).where(Envelope.expire_time <= now).limit(1).scalar_subquery(),
        select(literal(1))
        .where(RateCounter.window_start < counters_before)
        .limit(1)
        .scalar_subquery(),
        select(literal(1))
        .where(ConversationCount.hour_start < hours_before)
        .limit(1)
        .scalar_subquery(),
    )
    return any((await conn.execute(q)).one())


# --- outbox ----------------------------------------------------------------------------------


def outbox_row(kind: str, payload: dict[str, str], now: datetime) -> dict[str, Any]:
    return {
        "kind": kind,
        "payload": json.dumps(payload, sort_keys=True),
        "attempts": 0,
        "next_attempt_time": now,
        "create_time": now,
        "last_error": "",
    }


async def add_outbox(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        await conn.execute(_INSERT_OUTBOX, list(rows))


async def outbox_due(conn: AsyncConnection, now: datetime) -> bool:
    """Whether any outbox row is due: one probe of ix_outbox_due, no write lock."""
    q = select(literal(1)).where(OutboxItem.next_attempt_time <= now).limit(1)
    return (await conn.execute(q)).first() is not None


async def claim_outbox(
    conn: AsyncConnection, now: datetime, lease_until: datetime, limit: int
) -> Sequence[Record]:
    """Due items, leased to this worker until `lease_until` (other replicas skip them), in one
    UPDATE ... RETURNING (PostgreSQL: rows another worker holds are skipped, not waited for)."""
    due = (
        select(OutboxItem.id)
        .where(OutboxItem.next_attempt_time <= now)
        # Index order (ix_outbox_due; SQLite indexes end in the rowid): no scan of the table
        # in primary-key order past rows that are leased or backing off.
        .order_by(OutboxItem.next_attempt_time, OutboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    q = (
        update(OutboxItem)
        .where(OutboxItem.id.in_(due.scalar_subquery()))
        .values(next_attempt_time=lease_until)
        .returning(OutboxItem.id, OutboxItem.kind, OutboxItem.payload, OutboxItem.attempts)
    )
    return sorted((await conn.execute(q)).all(), key=lambda r: int(r.id))


async def finish_outbox(conn: AsyncConnection, item_ids: Sequence[int]) -> None:
    if item_ids:
        await conn.execute(delete(OutboxItem).where(OutboxItem.id.in_(list(item_ids))))


async def retry_outbox(
    conn: AsyncConnection, item_id: int, attempts: int, when: datetime, error: str
) -> None:
    await conn.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item_id)
        .values(attempts=attempts, next_attempt_time=when, last_error=error[:500])
    )
