"""The ledger's arithmetic, as pure functions (TigerBeetle's account and two-phase model).

A transfer moves `amount` from a debit account to a credit account of the same currency:
- posted:       debit.debits_posted += a;  credit.credits_posted += a
- pending:      debit.debits_pending += a; credit.credits_pending += a
- post_pending: the pending amount moves from *_pending to *_posted on both sides
- void_pending: the pending amount leaves *_pending on both sides
After every transfer, for every account:
    debits_posted + debits_pending <= credits_posted + credit_limit
and no column leaves the int64 range. Python integers never overflow, so the checks are exact.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bizmsg.kit.errors import FailedPrecondition, ResourceExhausted

INT64_MAX = 2**63 - 1
# Settlement accounts have no real limit: money from outside may always come in.
UNLIMITED_CREDIT = INT64_MAX
# How soon a caller refused for funds might retry (a top-up takes a while).
FUNDS_RETRY_SECONDS = 60.0


class Op(enum.Enum):
    POSTED = "posted"
    PENDING = "pending"
    POST_PENDING = "post_pending"
    VOID_PENDING = "void_pending"


@dataclass(frozen=True)
class Balances:
    account_id: str
    currency: str
    credit_limit: int
    credits_posted: int = 0
    debits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    @property
    def available(self) -> int:
        """What can still be debited or reserved (never more than an int64)."""
        value = self.credits_posted + self.credit_limit - self.debits_posted - self.debits_pending
        return min(value, INT64_MAX)

    def holds(self) -> bool:
        """The account invariant, and every column within int64."""
        columns = (
            self.credits_posted,
            self.debits_posted,
            self.debits_pending,
            self.credits_pending,
        )
        return (
            self.debits_posted + self.debits_pending <= self.credits_posted + self.credit_limit
            and all(0 <= c <= INT64_MAX for c in columns)
        )


@dataclass(frozen=True)
class Delta:
    """How one transfer changes one account's columns."""

    credits_posted: int = 0
    debits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0


def deltas(op: Op, amount: int) -> tuple[Delta, Delta]:
    """(debit side, credit side) column changes of a transfer."""
    a = amount
    if op is Op.POSTED:
        return Delta(debits_posted=a), Delta(credits_posted=a)
    if op is Op.PENDING:
        return Delta(debits_pending=a), Delta(credits_pending=a)
    if op is Op.POST_PENDING:
        return (
            Delta(debits_posted=a, debits_pending=-a),
            Delta(credits_posted=a, credits_pending=-a),
        )
    return Delta(debits_pending=-a), Delta(credits_pending=-a)


def apply(b: Balances, d: Delta) -> Balances:
    return replace(
        b,
        credits_posted=b.credits_posted + d.credits_posted,
        debits_posted=b.debits_posted + d.debits_posted,
        debits_pending=b.debits_pending + d.debits_pending,
        credits_pending=b.credits_pending + d.credits_pending,
    )


def _overflows(b: Balances) -> bool:
    return any(
        c > INT64_MAX
        for c in (b.credits_posted, b.debits_posted, b.debits_pending, b.credits_pending)
    )


def _insufficient(b: Balances, amount: int) -> ResourceExhausted:
    return ResourceExhausted(
        "INSUFFICIENT_FUNDS",
        f"account {b.account_id} cannot pay {amount} micros {b.currency}",
        quota_violations=[
            (
                f"accounts/{b.account_id}",
                f"available {b.available} micros {b.currency}, needed {amount}",
            )
        ],
        retry_after=FUNDS_RETRY_SECONDS,
        metadata={"account_id": b.account_id, "available_micros": str(b.available)},
    )


def _overflow() -> FailedPrecondition:
    return FailedPrecondition(
        "BALANCE_OVERFLOW", "the transfer would take a balance beyond the int64 range"
    )


def check_debit(op: Op, debit: Balances, amount: int) -> tuple[Balances, Delta]:
    """The debit side of a transfer on its own: its new balances, or the error."""
    delta = deltas(op, amount)[0]
    new = apply(debit, delta)
    if _overflows(new):
        raise _overflow()
    if not new.holds():
        raise _insufficient(debit, amount)
    return new, delta


def check_credit(op: Op, credit: Balances, amount: int) -> tuple[Balances, Delta]:
    """The credit side of a transfer on its own: its new balances, or the error."""
    delta = deltas(op, amount)[1]
    new = apply(credit, delta)
    if _overflows(new):
        raise _overflow()
    if not new.holds():
        # Only reachable through inconsistent data: refuse rather than break the invariant.
        raise FailedPrecondition(
            "LEDGER_INCONSISTENT", f"account {credit.account_id} would break the invariant"
        )
    return new, delta


def check_shape(debit_currency: str, credit_currency: str, amount: int) -> None:
    """What a transfer must be before any balance is looked at."""
    if debit_currency != credit_currency:
        raise FailedPrecondition(
            "CURRENCY_MISMATCH",
            f"cannot move {debit_currency} into a {credit_currency} account",
        )
    if not 0 < amount <= INT64_MAX:
        raise FailedPrecondition(
            "AMOUNT_OUT_OF_RANGE", "a transfer amount must be 1..2^63-1 micros"
        )


def transfer(
    op: Op, debit: Balances, credit: Balances, amount: int
) -> tuple[Balances, Balances, Delta, Delta]:
    """Check a transfer against both accounts and return their new balances and deltas.

    Raises ResourceExhausted (insufficient funds) or FailedPrecondition (currency mismatch,
    overflow); nothing is changed then, since the caller writes only what this returns.
    """
    check_shape(debit.currency, credit.currency, amount)
    d_delta, c_delta = deltas(op, amount)
    if _overflows(apply(debit, d_delta)) or _overflows(apply(credit, c_delta)):
        raise _overflow()
    new_debit, _ = check_debit(op, debit, amount)
    new_credit, _ = check_credit(op, credit, amount)
    return new_debit, new_credit, d_delta, c_delta
