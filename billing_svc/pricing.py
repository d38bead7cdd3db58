"""Per-message pricing: one function used by GetQuote and AuthorizeCharge alike, so the
quote and the charge always agree.

Rules, first match wins:
1. inside the 72-hour free-entry window everything is free;
2. service messages (free-form replies) are free;
3. utility inside the customer-service window is free;
4. otherwise (marketing, authentication, utility outside the window) the rate card in force
   for the business wallet's currency prices the message per delivered message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection

from billing_svc.cardcache import RateCards
from billing_svc.directory import AccountRef, Directory
from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.errors import FailedPrecondition


def rule_for(category: int, window: int) -> int:
    """The PricingRule for a category sent under a window kind (pure)."""
    if window == common_pb2.WINDOW_KIND_FREE_ENTRY:
        return billing_pb2.PRICING_RULE_FREE_ENTRY_WINDOW
    if category == common_pb2.CATEGORY_SERVICE:
        return billing_pb2.PRICING_RULE_SERVICE_FREE
    if (
        category == common_pb2.CATEGORY_UTILITY
        and window == common_pb2.WINDOW_KIND_CUSTOMER_SERVICE
    ):
        return billing_pb2.PRICING_RULE_UTILITY_IN_SERVICE_WINDOW
    return billing_pb2.PRICING_RULE_RATE_CARD


@dataclass(frozen=True)
class Quote:
    amount: int
    currency: str
    rule: int
    rate_card_version: int
    # The business wallet, or None for a free message of a business without one.
    wallet: AccountRef | None
    # The newest rate-card version the price was read against (0: no card used); a caller
    # that did not ask for a checked price must prove it still newest (postings.try_reserve).
    cards_latest: int = 0

    @property
    def free(self) -> bool:
        return self.amount == 0


def _category_name(category: int) -> str:
    return str(common_pb2.Category.Name(category))  # type: ignore[arg-type]


def wallet_owner(business_id: str) -> str:
    return f"business:{business_id}"


async def quote(
    conn: AsyncConnection,
    now: datetime,
    directory: Directory,
    cards: RateCards,
    *,
    business_id: str,
    recipient_country: str,
    category: int,
    window: int,
    check_later: bool = False,
) -> Quote:
    """Price a message. The rate card comes from the in-memory cache, checked current by one
    read; with check_later a positive price comes unchecked and the caller checks it in the
    statement that reserves it (a missing or zero price is always checked before it counts)."""
    rule = rule_for(category, window)
    wallet = await directory.wallet(conn, business_id)
    currency = wallet.currency if wallet is not None else ""
    if rule != billing_pb2.PRICING_RULE_RATE_CARD:
        return Quote(0, currency, rule, 0, wallet)
    if wallet is None:
        raise FailedPrecondition(
            "NO_WALLET",
            f"business {business_id} has no wallet to pay for this message",
            violations=[("WALLET", f"business:{business_id}", "open a business wallet first")],
        )
    card_set = await cards.get(conn, currency, now)
    found = card_set.price(now, category, recipient_country)
    if not (check_later and found is not None and found[0] > 0):
        card_set = await cards.checked(conn, currency, now)
        found = card_set.price(now, category, recipient_country)
    if found is None:
        raise FailedPrecondition(
            "NO_PRICE",
            f"no rate card in force prices {_category_name(category)} "
            f"to {recipient_country} in {currency}",
            violations=[
                ("RATE_CARD", f"{currency}/{recipient_country}", "no price for this message")
            ],
        )
    price, version = found
    return Quote(price, currency, rule, version, wallet, card_set.latest)
