"""The delivery rules that need no I/O: TTLs, limits, statuses, consent reasons."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2
from bizmsg.delivery.v1 import delivery_pb2

Category = common_pb2.Category
Tier = delivery_pb2.MessagingTier


class Status:
    """The MessageStatus values as plain class attributes: the generated enum wrapper
    (delivery_pb2.MessageStatus) looks each one up in Python, and a send reads several."""

    MESSAGE_STATUS_UNSPECIFIED = delivery_pb2.MESSAGE_STATUS_UNSPECIFIED
    MESSAGE_STATUS_ACCEPTED = delivery_pb2.MESSAGE_STATUS_ACCEPTED
    MESSAGE_STATUS_DELIVERED = delivery_pb2.MESSAGE_STATUS_DELIVERED
    MESSAGE_STATUS_READ = delivery_pb2.MESSAGE_STATUS_READ
    MESSAGE_STATUS_FAILED = delivery_pb2.MESSAGE_STATUS_FAILED
    MESSAGE_STATUS_EXPIRED = delivery_pb2.MESSAGE_STATUS_EXPIRED


MIN_TTL = timedelta(seconds=30)
# Authentication codes are useless after minutes; everything else may wait up to 30 days.
AUTH_DEFAULT_TTL = timedelta(minutes=10)
AUTH_MAX_TTL = timedelta(minutes=15)
DEFAULT_TTL = timedelta(days=30)
MAX_TTL = timedelta(days=30)
# Billing keeps an authorization this much longer than the message can live, so delivery
# (capture or void from the outbox) always resolves it first.
AUTHORIZATION_MARGIN = timedelta(days=1)

MAX_ENVELOPE_BYTES = 64 * 1024
MAX_DEVICES_PER_MESSAGE = 16
MAX_IDS_PER_CALL = 500
MAX_PRE_KEYS_PER_CALL = 200
MAX_PRE_KEYS_PER_DEVICE = 1000
KEY_SIZE = 32
SIGNATURE_SIZE = 64

DEFAULT_MESSAGES_PER_SECOND = 80
MAX_MESSAGES_PER_SECOND = 1000
DEFAULT_TIER = Tier.MESSAGING_TIER_250
TIER_LIMITS: dict[int, int | None] = {
    Tier.MESSAGING_TIER_50: 50,
    Tier.MESSAGING_TIER_250: 250,
    Tier.MESSAGING_TIER_2K: 2_000,
    Tier.MESSAGING_TIER_10K: 10_000,
    Tier.MESSAGING_TIER_100K: 100_000,
    Tier.MESSAGING_TIER_UNLIMITED: None,
}
UNIQUE_PEOPLE_PERIOD = timedelta(hours=24)


def category_name(category: int) -> str:
    return common_pb2.Category.Name(category)  # type: ignore[arg-type]


def status_name(status: int) -> str:
    return delivery_pb2.MessageStatus.Name(status)  # type: ignore[arg-type]


def ttl_bounds(category: int) -> tuple[timedelta, timedelta, timedelta]:
    """(minimum, default, maximum) TTL of a message of this category."""
    if category == Category.CATEGORY_AUTHENTICATION:
        return MIN_TTL, AUTH_DEFAULT_TTL, AUTH_MAX_TTL
    return MIN_TTL, DEFAULT_TTL, MAX_TTL


# A message's state only moves forward along this order; FAILED and EXPIRED are final.
_RANK: dict[int, int] = {
    Status.MESSAGE_STATUS_ACCEPTED: 1,
    Status.MESSAGE_STATUS_DELIVERED: 2,
    Status.MESSAGE_STATUS_READ: 3,
    Status.MESSAGE_STATUS_FAILED: 4,
    Status.MESSAGE_STATUS_EXPIRED: 4,
}


def may_move(current: int, new: int) -> bool:
    """Whether a message in `current` may move to `new` (a repeat or a step back is ignored)."""
    if current in (Status.MESSAGE_STATUS_FAILED, Status.MESSAGE_STATUS_EXPIRED):
        return False
    if new in (Status.MESSAGE_STATUS_FAILED, Status.MESSAGE_STATUS_EXPIRED):
        # Only a message nobody received can fail or expire.
        return current == Status.MESSAGE_STATUS_ACCEPTED
    return _RANK[new] > _RANK[current]


_PREFIX = "CONSENT_DECISION_REASON_"


def consent_reason(reason: int) -> str:
    """The consent service's decision reason as our ErrorInfo reason, e.g. NO_CONSENT."""
    try:
        name = consent_pb2.ConsentDecisionReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return "CONSENT_REFUSED"
    short = name.removeprefix(_PREFIX)
    return "CONSENT_EXPIRED" if short == "EXPIRED" else short


# When no category is named, a business may fetch a person's keys if any is allowed; the
# refusal reported is the most telling one.
_REASON_WEIGHT = {"BLOCKED": 3, "REVOKED": 2, "CONSENT_EXPIRED": 1}


def strongest_refusal(reasons: list[str]) -> str:
    return max(reasons, key=lambda r: _REASON_WEIGHT.get(r, 0))


@dataclass(frozen=True)
class Limits:
    messages_per_second: int = DEFAULT_MESSAGES_PER_SECOND
    tier: int = DEFAULT_TIER

    @property
    def unique_people(self) -> int | None:
        return TIER_LIMITS[self.tier]


def second_window(epoch_seconds: float) -> int:
    return int(epoch_seconds)


def minute_window(epoch_seconds: float) -> int:
    return int(epoch_seconds // 60) * 60


def hour_window(epoch_seconds: float) -> int:
    return int(epoch_seconds // 3600) * 3600
