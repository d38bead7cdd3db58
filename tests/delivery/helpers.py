"""Scenario helpers for delivery tests, usable against in-process threads or real processes.

`Stack` only needs the three targets and a way to move the services' clock, so the same
scenarios run on `ServiceThread`s (here) and on `kit.testing.start_stack` processes.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.testing import ServiceThread, metadata_for, token_for
from bizmsg.sdk import Client

MARKETING = common_pb2.CATEGORY_MARKETING
UTILITY = common_pb2.CATEGORY_UTILITY
AUTHENTICATION = common_pb2.CATEGORY_AUTHENTICATION
SERVICE = common_pb2.CATEGORY_SERVICE
S = delivery_pb2.MessageStatus
PRICE_MARKETING = 50_000  # micros per delivered marketing message (EUR)
PRICE_AUTHENTICATION = 20_000

_ids = itertools.count(1)


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


def details(e: grpc.RpcError) -> dict[str, Any]:
    """ErrorInfo, BadRequest, QuotaFailure, ... of a failed call, by type name."""
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    assert status is not None, "the error carried no google.rpc.Status"
    out: dict[str, Any] = {}
    for any_msg in status.details:
        for t in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.QuotaFailure,
            error_details_pb2.RetryInfo,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.ResourceInfo,
        ):
            if any_msg.Is(t.DESCRIPTOR):
                msg = t()
                any_msg.Unpack(msg)
                out[t.DESCRIPTOR.name] = msg
    return out


@contextmanager
def fails(code: grpc.StatusCode, reason: str | None = None) -> Iterator[dict[str, Any]]:
    """Expect the block to fail with `code` (and delivery's ErrorInfo `reason`)."""
    got: dict[str, Any] = {}
    try:
        yield got
    except grpc.RpcError as e:
        assert e.code() == code, f"expected {code}, got {e.code()}: {e.details()}"
        got.update(details(e))
        info = got["ErrorInfo"]
        if reason is not None:
            assert info.reason == reason, info
    else:
        raise AssertionError(f"expected {code}")


def wait_until(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy (background relays are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)


@dataclass
class Stack:
    consent_target: str
    billing_target: str
    delivery_target: str
    advance: Callable[[float], None]
    store_root: Path
    _channels: dict[str, grpc.Channel] = field(default_factory=dict)
    wallets: dict[str, str] = field(default_factory=dict)

    def channel(self, target: str) -> grpc.Channel:
        if target not in self._channels:
            self._channels[target] = grpc.insecure_channel(target)
        return self._channels[target]

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    @property
    def consent(self) -> consent_pb2_grpc.ConsentServiceStub:
        return consent_pb2_grpc.ConsentServiceStub(self.channel(self.consent_target))

    @property
    def billing(self) -> billing_pb2_grpc.BillingServiceStub:
        return billing_pb2_grpc.BillingServiceStub(self.channel(self.billing_target))

    @property
    def delivery(self) -> delivery_pb2_grpc.DeliveryServiceStub:
        return delivery_pb2_grpc.DeliveryServiceStub(self.channel(self.delivery_target))

    # --- actors ------------------------------------------------------------------------------

    def client(self, principal: str, device_id: str = "d1", *, country: str = "DE") -> Client:
        """An SDK client with its own store directory (same directory = same device)."""
        directory = self.store_root / principal.replace(":", "_") / device_id
        return Client(
            self.channel(self.delivery_target),
            principal=principal,
            device_id=device_id,
            token=token_for(principal),
            store_dir=directory,
            country_code=country if principal.startswith("user:") else "",
        )

    def person(self, person_id: str, device_id: str = "d1", pre_keys: int = 5) -> Client:
        c = self.client(f"user:{person_id}", device_id)
        c.publish_keys(pre_keys)
        return c

    def business(self, business_id: str, device_id: str = "d1", pre_keys: int = 5) -> Client:
        c = self.client(f"business:{business_id}", device_id)
        c.publish_keys(pre_keys)
        return c

    # --- consent -----------------------------------------------------------------------------

    def grant(self, person: str, business: str, *categories: int) -> None:
        self.consent.GrantConsent(
            consent_pb2.GrantConsentRequest(
                request_id=rid("grant"),
                person_id=person,
                business_id=business,
                categories=list(categories),
                all_categories=not categories,
                collection_method=consent_pb2.COLLECTION_METHOD_WEB_FORM,
                notice=consent_pb2.Notice(text="We will send you offers.", locale="en-GB"),
            ),
            metadata=metadata_for(f"user:{person}"),
        )

    def revoke(self, person: str, business: str) -> None:
        self.consent.RevokeConsent(
            consent_pb2.RevokeConsentRequest(
                request_id=rid("revoke"),
                person_id=person,
                business_id=business,
                all_categories=True,
            ),
            metadata=metadata_for(f"user:{person}"),
        )

    def block(self, person: str, business: str) -> None:
        self.consent.BlockBusiness(
            consent_pb2.BlockBusinessRequest(
                request_id=rid("block"), person_id=person, business_id=business
            ),
            metadata=metadata_for(f"user:{person}"),
        )

    # --- billing -----------------------------------------------------------------------------

    def rate_card(self) -> None:
        """EUR prices for every country: marketing and authentication charged, others free."""
        self.billing.SetRateCard(
            billing_pb2.SetRateCardRequest(
                request_id=rid("card"),
                currency_code="EUR",
                entries=[
                    billing_pb2.RateCardEntry(
                        category=MARKETING,
                        price=common_pb2.Money(amount_micros=PRICE_MARKETING, currency_code="EUR"),
                    ),
                    billing_pb2.RateCardEntry(
                        category=AUTHENTICATION,
                        price=common_pb2.Money(
                            amount_micros=PRICE_AUTHENTICATION, currency_code="EUR"
                        ),
                    ),
                    billing_pb2.RateCardEntry(
                        category=UTILITY,
                        price=common_pb2.Money(amount_micros=10_000, currency_code="EUR"),
                    ),
                ],
            ),
            metadata=metadata_for("admin"),
        )

    def fund(self, business: str, micros: int) -> str:
        """Opens the business's EUR wallet (once) and tops it up; returns the account id."""
        if business not in self.wallets:
            account = self.billing.CreateAccount(
                billing_pb2.CreateAccountRequest(
                    request_id=rid("acct"),
                    owner=f"business:{business}",
                    kind=billing_pb2.ACCOUNT_KIND_BUSINESS_WALLET,
                    currency_code="EUR",
                ),
                metadata=metadata_for("admin"),
            ).account
            self.wallets[business] = account.account_id
        if micros:
            self.billing.TopUp(
                billing_pb2.TopUpRequest(
                    request_id=rid("topup"),
                    account_id=self.wallets[business],
                    amount=common_pb2.Money(amount_micros=micros, currency_code="EUR"),
                    external_reference=rid("psp"),
                ),
                metadata=metadata_for("admin"),
            )
        return self.wallets[business]

    def wallet(self, business: str) -> billing_pb2.Account:
        return self.billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=self.wallets[business]),
            metadata=metadata_for("admin"),
        ).account

    # --- delivery ----------------------------------------------------------------------------

    def statuses(self, principal: str, message_id: str = "") -> list[int]:
        events = self.delivery.StreamStatuses(
            delivery_pb2.StreamStatusesRequest(message_id=message_id),
            metadata=metadata_for(principal),
        )
        return [e.status for e in events]

    def set_limits(self, business: str, per_second: int, tier: int) -> None:
        self.delivery.UpdateMessagingLimits(
            delivery_pb2.UpdateMessagingLimitsRequest(
                request_id=rid("limits"),
                limits=delivery_pb2.MessagingLimits(
                    business_id=business, messages_per_second=per_second, tier=tier
                ),
            ),
            metadata=metadata_for("admin"),
        )


DELIVERY_ENV = {
    "BIZMSG_DELIVERY_RELAY_INTERVAL": "0.05",
    "BIZMSG_DELIVERY_SWEEP_INTERVAL": "0.1",
    "BIZMSG_DELIVERY_POLL_INTERVAL": "0.2",
    # High enough for the 81-in-a-second test to one person; pair limits have their own test.
    "BIZMSG_DELIVERY_PAIR_LIMIT_PER_MINUTE": "100",
}


@dataclass
class ThreadStack:
    """Consent, billing and delivery as in-process ServiceThreads sharing one ManualClock."""

    stack: Stack
    consent: ServiceThread
    billing: ServiceThread
    delivery: ServiceThread
    clock: ManualClock

    def restart_delivery(self) -> None:
        """Stops delivery and starts it again on the same database."""
        self.restart_delivery_with({"consent": self.consent.target, "billing": self.billing.target})

    def restart_delivery_with(self, targets: dict[str, str]) -> None:
        from delivery_svc.app import DEFINITION

        url = self.delivery.settings.database_url("delivery")
        self.delivery.stop()
        self.delivery = ServiceThread(
            DEFINITION,
            database_url=url,
            clock=self.clock,
            env=DELIVERY_ENV,
            dependency_targets=dict(targets),
        ).start()
        self.stack.delivery_target = self.delivery.target

    def db(self, sql: str) -> list[tuple[Any, ...]]:
        """Runs SQL on delivery's database (for checks like 'nothing stored')."""
        from sqlalchemy import text

        async def run() -> list[tuple[Any, ...]]:
            async with self.delivery.runtime.db.read() as s:
                return [tuple(r) for r in (await s.execute(text(sql))).all()]

        result: list[tuple[Any, ...]] = self.delivery.run(run())
        return result


@contextmanager
def thread_stack(
    database_url_factory: Callable[[str], str],
    tmp_path: Path,
    clock: ManualClock,
    delivery_env: dict[str, str] | None = None,
) -> Iterator[ThreadStack]:
    from billing_svc.app import DEFINITION as BILLING
    from consent_svc.app import DEFINITION as CONSENT
    from delivery_svc.app import DEFINITION as DELIVERY

    consent = ServiceThread(CONSENT, database_url=database_url_factory("consent"), clock=clock)
    billing = ServiceThread(BILLING, database_url=database_url_factory("billing"), clock=clock)
    with consent, billing:
        delivery = ServiceThread(
            DELIVERY,
            database_url=database_url_factory("delivery"),
            clock=clock,
            env={**DELIVERY_ENV, **(delivery_env or {})},
            dependency_targets={"consent": consent.target, "billing": billing.target},
        ).start()
        stack = Stack(
            consent.target,
            billing.target,
            delivery.target,
            advance=clock.advance,
            store_root=tmp_path / "clients",
        )
        ts = ThreadStack(stack, consent, billing, delivery, clock)
        try:
            stack.rate_card()
            yield ts
        finally:
            stack.close()
            ts.delivery.stop()
