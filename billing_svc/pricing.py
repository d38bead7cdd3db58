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

from sqlalchemy.ext.asyncio import AsyncSession

from billing_svc import store
from billing_svc.models import AccountRow
from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.kit.errors import FailedPrecondition

BUSINESS_WALLET = billing_pb2.ACCOUNT_KIND_BUSINESS_WALLET


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
    # The business wallet (locked when asked to be), or None for a free message without one.
    wallet: AccountRow | None

    @property
    def free(self) -> bool:
        return self.amount == 0


def _category_name(category: int) -> str:
    return str(common_pb2.Category.Name(category))  # type: ignore[arg-type]


def wallet_owner(business_id: str) -> str:
    return f"business:{business_id}"


async def quote(
    session: AsyncSession,
    now: datetime,
    *,
    business_id: str,
    recipient_country: str,
    category: int,
    window: int,
    lock_wallet: bool = False,
) -> Quote:
    """Price a message. With lock_wallet, a charged message's wallet comes back locked
    (SELECT ... FOR UPDATE), ready for the reservation."""
    rule = rule_for(category, window)
    charged = rule == billing_pb2.PRICING_RULE_RATE_CARD
    wallet = await store.find_account(
        session, wallet_owner(business_id), BUSINESS_WALLET, lock=lock_wallet and charged
    )
    currency = wallet.currency if wallet is not None else ""
    if not charged:
        return Quote(0, currency, rule, 0, wallet)
    if wallet is None:
        raise FailedPrecondition(
            "NO_WALLET",
            f"business {business_id} has no wallet to pay for this message",
            violations=[("WALLET", f"business:{business_id}", "open a business wallet first")],
        )
    found = await store.price_at(session, currency, now, category, recipient_country)
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
    return Quote(price, currency, rule, version, wallet)
