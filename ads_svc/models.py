"""Tables of the ads service (storage only; the rules live in the domain modules)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bizmsg.kit.idempotency import idempotency_table
from bizmsg.kit.storage import UTCDateTime

# Impression and click charge states.
PENDING = "PENDING"  # reserved in our budget, billing not yet confirmed (the relay settles it)
CHARGED = "CHARGED"  # billing posted it (or nothing was owed)
FAILED = "FAILED"  # billing refused; the reservation was released
UNCHARGED = "UNCHARGED"  # clicks only: recorded, but the budget had no room for the charge


class Base(DeclarativeBase):
    metadata = MetaData()


IDEMPOTENCY = idempotency_table(Base.metadata)


class CampaignRow(Base):
    """A campaign, with its running spend and counters on the same row.

    Spend lives here so that a budget reservation is one conditional UPDATE of one row,
    atomic on every replica (see store.reserve).
    """

    __tablename__ = "campaigns"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    advertiser_id: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str] = mapped_column(String(128))
    business_id: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(200))
    headline: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    media_uri: Mapped[str] = mapped_column(String(2048))
    call_to_action: Mapped[int] = mapped_column(Integer)
    # JSON lists; country and language are also in campaign_targets for the index.
    countries: Mapped[str] = mapped_column(Text)
    languages: Mapped[str] = mapped_column(Text)
    interests: Mapped[str] = mapped_column(Text)
    bid_type: Mapped[int] = mapped_column(Integer)
    bid_micros: Mapped[int] = mapped_column(BigInteger)
    currency_code: Mapped[str] = mapped_column(String(3))
    daily_budget_micros: Mapped[int] = mapped_column(BigInteger)
    lifetime_budget_micros: Mapped[int] = mapped_column(BigInteger)
    start_time: Mapped[datetime] = mapped_column(UTCDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cap_max_impressions: Mapped[int] = mapped_column(Integer)
    cap_period_days: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    spend_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # The UTC day (YYYY-MM-DD) spend_day_micros belongs to; a new day starts at zero.
    spend_day: Mapped[str] = mapped_column(String(10), default="")
    spend_day_micros: Mapped[int] = mapped_column(BigInteger, default=0)
    # Counters behind the smoothed click-through estimate of the auction.
    impressions: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    # Set when billing refused a charge: skip the campaign until then instead of
    # asking billing again on every serve.
    unfunded_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)
    update_time: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_campaigns_advertiser", "advertiser_id", "id"),)


class CampaignTargetRow(Base):
    """One (country, language) a campaign targets; language "*" means any.

    ServeAd reads its candidates best first from ix_campaign_targets_rank: `rank_hint` is the
    campaign's estimated score (store._RANK_HINT), kept up to date by store.refresh_rank in
    every transaction that changes what it is computed from (the bid, the click and impression
    counters), so a serve reads a page's worth of rows however many campaigns match.
    """

    __tablename__ = "campaign_targets"

    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    language: Mapped[str] = mapped_column(String(8), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    rank_hint: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")

    __table_args__ = (
        Index("ix_campaign_targets_campaign", "campaign_id"),
        Index("ix_campaign_targets_rank", "country", "language", "rank_hint", "campaign_id"),
    )


class ImpressionRow(Base):
    __tablename__ = "impressions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(128))
    person_id: Mapped[str] = mapped_column(String(128))
    business_id: Mapped[str] = mapped_column(String(128))
    placement: Mapped[int] = mapped_column(Integer)
    serve_time: Mapped[datetime] = mapped_column(UTCDateTime)
    day: Mapped[str] = mapped_column(String(10))
    price_micros: Mapped[int] = mapped_column(BigInteger)
    click_price_micros: Mapped[int] = mapped_column(BigInteger)
    currency_code: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(10))

    __table_args__ = (
        # Frequency caps: a person's recent impressions, per campaign.
        Index("ix_impressions_person", "person_id", "campaign_id", "serve_time"),
        # The relay: charges still pending.
        Index("ix_impressions_state", "state", "serve_time"),
    )


class ClickRow(Base):
    __tablename__ = "clicks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # One click per impression: a second click returns the first.
    impression_id: Mapped[str] = mapped_column(String(40), unique=True)
    campaign_id: Mapped[str] = mapped_column(String(40))
    account_id: Mapped[str] = mapped_column(String(128))
    person_id: Mapped[str] = mapped_column(String(128))
    business_id: Mapped[str] = mapped_column(String(128))
    day: Mapped[str] = mapped_column(String(10))
    price_micros: Mapped[int] = mapped_column(BigInteger)
    currency_code: Mapped[str] = mapped_column(String(3))
    state: Mapped[str] = mapped_column(String(10))
    create_time: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_clicks_state", "state", "create_time"),)


class DailyStatsRow(Base):
    __tablename__ = "campaign_daily_stats"

    campaign_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    impressions: Mapped[int] = mapped_column(BigInteger, default=0)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0)
    spend_micros: Mapped[int] = mapped_column(BigInteger, default=0)


class PersonLockRow(Base):
    """One row per person, locked while a serve checks and records a frequency-capped
    impression, so concurrent serves for the same person cannot both pass the cap."""

    __tablename__ = "person_locks"

    person_id: Mapped[str] = mapped_column(String(128), primary_key=True)
