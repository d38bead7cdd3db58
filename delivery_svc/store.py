"""Storage of the delivery service: SQLAlchemy queries only, no rules.

Every function takes the caller's AsyncSession, so the domain modules decide what goes into
one transaction. Hot queries are served by the indexes declared in models.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from delivery_svc.models import (
    BusinessLimits,
    ConversationStart,
    Device,
    Envelope,
    Message,
    OneTimePreKey,
    OutboxItem,
    RateCounter,
    Sender,
    StatusEvent,
)


def _insert(session: AsyncSession, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT on both backends."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


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


async def recipient_country(session: AsyncSession, owner: str) -> str:
    """The country of the owner's most recently registered device (like a phone number's)."""
    q = (
        select(Device.country_code)
        .where(Device.owner == owner, Device.country_code != "")
        .order_by(Device.update_time.desc())
        .limit(1)
    )
    return str((await session.execute(q)).scalar_one_or_none() or "")


# --- limits ----------------------------------------------------------------------------------


async def get_limits(session: AsyncSession, business_id: str) -> BusinessLimits | None:
    return await session.get(BusinessLimits, business_id)


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


async def counter(session: AsyncSession, key: str, window_start: int) -> int:
    q = select(RateCounter.count).where(
        RateCounter.key == key, RateCounter.window_start == window_start
    )
    return int((await session.execute(q)).scalar_one_or_none() or 0)


async def bump_counter(session: AsyncSession, key: str, window_start: int) -> None:
    stmt = _insert(session, RateCounter).values(key=key, window_start=window_start, count=1)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["key", "window_start"], set_={"count": RateCounter.count + 1}
        )
    )


async def drop_counters_before(session: AsyncSession, window_start: int) -> None:
    await session.execute(delete(RateCounter).where(RateCounter.window_start < window_start))


async def conversation_start(
    session: AsyncSession, business_id: str, person_id: str
) -> datetime | None:
    row = await session.get(ConversationStart, (business_id, person_id))
    return None if row is None else row.start_time


async def recent_conversations(
    session: AsyncSession, business_id: str, since: datetime
) -> tuple[int, datetime | None]:
    """How many people the business started conversations with since `since`, and the oldest."""
    q = select(func.count(), func.min(ConversationStart.start_time)).where(
        ConversationStart.business_id == business_id, ConversationStart.start_time > since
    )
    count, oldest = (await session.execute(q)).one()
    return int(count), oldest


async def put_conversation_start(
    session: AsyncSession, business_id: str, person_id: str, now: datetime
) -> None:
    stmt = _insert(session, ConversationStart).values(
        business_id=business_id, person_id=person_id, start_time=now
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["business_id", "person_id"], set_={"start_time": now}
        )
    )


# --- messages and status events --------------------------------------------------------------


async def lock_sender(session: AsyncSession, sender: str) -> Sender:
    """The sender's row, locked until the transaction ends (created on first use)."""
    await session.execute(
        _insert(session, Sender).values(sender=sender, last_seq=0).on_conflict_do_nothing()
    )
    row = await session.get(Sender, sender, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


async def append_event(
    session: AsyncSession,
    sender: Sender,
    message: Message,
    status: int,
    now: datetime,
    reason: str = "",
) -> None:
    """Appends a status event; the sender row must be locked by this transaction."""
    sender.last_seq += 1
    session.add(
        StatusEvent(
            sender=sender.sender,
            seq=sender.last_seq,
            message_id=message.message_id,
            recipient=message.recipient,
            status=status,
            event_time=now,
            reason=reason,
        )
    )


async def events_after(
    session: AsyncSession, sender: str, after_seq: int, message_id: str, limit: int
) -> list[StatusEvent]:
    q = select(StatusEvent).where(StatusEvent.sender == sender, StatusEvent.seq > after_seq)
    if message_id:
        q = q.where(StatusEvent.message_id == message_id)
    q = q.order_by(StatusEvent.seq).limit(limit)
    return list((await session.scalars(q)).all())


async def get_messages(
    session: AsyncSession, message_ids: Sequence[str], *, lock: bool = False
) -> list[Message]:
    q = select(Message).where(Message.message_id.in_(list(message_ids)))
    if lock:
        q = q.with_for_update()
    return list((await session.scalars(q.order_by(Message.message_id))).all())


async def mailbox(
    session: AsyncSession, recipient: str, device_id: str, now: datetime, limit: int
) -> list[tuple[Envelope, Message]]:
    """Envelopes waiting for one device, oldest first, of messages not yet expired."""
    q = (
        select(Envelope, Message)
        .join(Message, Message.message_id == Envelope.message_id)
        .where(
            Envelope.recipient == recipient,
            Envelope.device_id == device_id,
            Envelope.expire_time > now,
        )
        .order_by(Envelope.id)
        .limit(limit)
    )
    return [(e, m) for e, m in (await session.execute(q)).all()]


async def delete_envelopes(
    session: AsyncSession, recipient: str, device_id: str, message_ids: Sequence[str]
) -> list[str]:
    """Deletes the device's envelopes of these messages; returns the message ids deleted."""
    q = select(Envelope.message_id).where(
        Envelope.recipient == recipient,
        Envelope.device_id == device_id,
        Envelope.message_id.in_(list(message_ids)),
    )
    found = [str(m) for m in (await session.scalars(q)).all()]
    if found:
        await session.execute(
            delete(Envelope).where(
                Envelope.recipient == recipient,
                Envelope.device_id == device_id,
                Envelope.message_id.in_(found),
            )
        )
    return found


async def delete_all_envelopes(session: AsyncSession, message_id: str) -> None:
    await session.execute(delete(Envelope).where(Envelope.message_id == message_id))


async def delete_expired_envelopes(session: AsyncSession, now: datetime) -> None:
    """Ciphertext other devices never fetched, of messages past their TTL."""
    await session.execute(delete(Envelope).where(Envelope.expire_time <= now))


async def move_status(
    session: AsyncSession, message_id: str, from_status: int, to_status: int, now: datetime
) -> bool:
    """Compare-and-set of a message's status; False when another writer moved it first."""
    result = await session.execute(
        update(Message)
        .where(Message.message_id == message_id, Message.status == from_status)
        .values(status=to_status, status_time=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def due_for_expiry(
    session: AsyncSession, status: int, now: datetime, limit: int
) -> list[str]:
    q = (
        select(Message.message_id)
        .where(Message.status == status, Message.expire_time <= now)
        .order_by(Message.expire_time)
        .limit(limit)
    )
    return [str(m) for m in (await session.scalars(q)).all()]


# --- outbox ----------------------------------------------------------------------------------


def add_outbox(session: AsyncSession, kind: str, payload: dict[str, str], now: datetime) -> None:
    session.add(
        OutboxItem(
            kind=kind,
            payload=json.dumps(payload, sort_keys=True),
            attempts=0,
            next_attempt_time=now,
            create_time=now,
            last_error="",
        )
    )


async def claim_outbox(
    session: AsyncSession, now: datetime, lease_until: datetime, limit: int
) -> list[OutboxItem]:
    """Due items, leased to this worker until `lease_until` (other replicas skip them)."""
    q = (
        select(OutboxItem)
        .where(OutboxItem.next_attempt_time <= now)
        .order_by(OutboxItem.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    items = list((await session.scalars(q)).all())
    for item in items:
        item.next_attempt_time = lease_until
    return items


async def finish_outbox(session: AsyncSession, item_id: int) -> None:
    await session.execute(delete(OutboxItem).where(OutboxItem.id == item_id))


async def retry_outbox(
    session: AsyncSession, item_id: int, attempts: int, when: datetime, error: str
) -> None:
    await session.execute(
        update(OutboxItem)
        .where(OutboxItem.id == item_id)
        .values(attempts=attempts, next_attempt_time=when, last_error=error[:500])
    )
