"""Tables of the consent service (SQLAlchemy 2).

No column holds a person's identifier in clear: rows are keyed by `person_hash`, an HMAC of the
person_id under a service secret, and personal fields are AES-GCM ciphertext under a per-person
key (`persons.data_key`). Erasing a person deletes that key and every row keyed by the hash; the
history rows stay, keyed by a random history_id, as ciphertext nobody can read.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bizmsg.kit.idempotency import idempotency_table
from bizmsg.kit.storage import UTCDateTime


class Base(DeclarativeBase):
    pass


idempotency_keys = idempotency_table(Base.metadata)


class ServiceKey(Base):
    """Service-wide secrets, made once per database so every replica shares them."""

    __tablename__ = "service_keys"
    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class Person(Base):
    """A person known to the service: their data key, history and ad preference."""

    __tablename__ = "persons"
    person_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    history_id: Mapped[str] = mapped_column(String(36), unique=True, nullable=False)
    data_key: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    ads_enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # Sealed JSON list of interests.
    ads_interests: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    ads_update_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class History(Base):
    """The head of one person's hash chain; outlives the person (erase_time set)."""

    __tablename__ = "histories"
    history_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    head_sequence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    head_hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    erase_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class HistoryEvent(Base):
    """One append-only event; `payload` is sealed with the person's key."""

    __tablename__ = "history_events"
    history_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("histories.history_id"), primary_key=True
    )
    sequence: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), nullable=False)
    event_type: Mapped[int] = mapped_column(Integer, nullable=False)
    event_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class Relation(Base):
    """Everything between one person and one business, in one row so that CheckConsent is a
    single primary-key read: consent, block and windows."""

    __tablename__ = "relations"
    person_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    business_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    consent_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    consent_version: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Bit masks of categories (see categories.py).
    granted: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    revoked: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    consent_expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Sealed JSON: collection method, notice, times, reference and the latest receipt.
    consent_details: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    blocked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    block_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_user_message_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    service_expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A click-to-chat entry point waiting for the business's first reply, until this time.
    entry_expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Sealed JSON of the referral that made the entry point.
    entry_referral: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    free_entry_expire_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class ErasureAnswer(Base):
    """Replay store for ErasePerson. Unlike the shared idempotency table it keys by a hash of
    (principal, request_id), so no erased person's principal stays in clear."""

    __tablename__ = "erasure_answers"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    response: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class PersonAnswer(Base):
    """Replay store for service:delivery's calls about a person (see replay.py): keyed by an HMAC
    of (principal, method, request_id) and tagged with the person's hash, so erasure removes it."""

    __tablename__ = "person_answers"
    __table_args__ = (Index("ix_person_answers_person_hash", "person_hash"),)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    person_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    response: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
