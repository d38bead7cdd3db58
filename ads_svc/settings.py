"""The ads service's own settings, read once from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from bizmsg.kit.config import Settings


@dataclass(frozen=True)
class AdsSettings:
    # Bids in different currencies cannot be compared, so one auction has one currency.
    currency: str
    # The reserve price R of the auction, in micros per 1,000 impressions.
    reserve_micros: int
    # How many of the best-scoring matching campaigns one serve considers.
    candidate_limit: int
    # After billing refused a campaign's charge, skip it for this long.
    unfunded_backoff_seconds: float
    # Charges still pending this long after the event are retried by the settlement job.
    settle_after_seconds: float
    settle_interval_seconds: float
    # How often posted impression charges are marked, in one batch.
    confirm_interval_seconds: float

    @classmethod
    def load(cls, s: Settings) -> AdsSettings:
        return cls(
            currency=s.env_str("BIZMSG_ADS_CURRENCY", "EUR"),
            reserve_micros=s.env_int("BIZMSG_ADS_RESERVE_CPM_MICROS", 100_000),
            candidate_limit=s.env_int("BIZMSG_ADS_CANDIDATE_LIMIT", 200),
            unfunded_backoff_seconds=s.env_float("BIZMSG_ADS_UNFUNDED_BACKOFF_SECONDS", 60.0),
            settle_after_seconds=s.env_float("BIZMSG_ADS_SETTLE_AFTER_SECONDS", 30.0),
            settle_interval_seconds=s.env_float("BIZMSG_ADS_SETTLE_INTERVAL_SECONDS", 10.0),
            confirm_interval_seconds=s.env_float("BIZMSG_ADS_CONFIRM_INTERVAL_SECONDS", 0.2),
        )
