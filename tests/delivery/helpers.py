"""Scenario helpers for the delivery tests: all four services as real processes.

`Stack` is the client side (stubs, SDK clients, consent/billing set-up calls); `ProcStack`
owns the processes, their databases and the clock file they all read, so a test can move
time, stop and start a service, and look into any service's database. One ProcStack per
backend is shared by every test in tests/delivery: tests keep apart by using their own
business and person ids (`uid`), never by starting new processes.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import inspect, text
from x3dh import HashFunction, IdentityKeyFormat

from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit.clock import OffsetFileClock
from bizmsg.kit.storage import Database
from bizmsg.kit.testing import (
    ServiceProcess,
    error_details,
    expect_error,
    metadata_for,
    start_stack,
    token_for,
)
from bizmsg.sdk import Client
from bizmsg.sdk.keys import X3DH_INFO, X3DHState

MARKETING = common_pb2.CATEGORY_MARKETING
UTILITY = common_pb2.CATEGORY_UTILITY
AUTHENTICATION = common_pb2.CATEGORY_AUTHENTICATION
SERVICE = common_pb2.CATEGORY_SERVICE
S = delivery_pb2.MessageStatus
PRICE_MARKETING = 50_000  # micros per delivered marketing message (EUR)
PRICE_AUTHENTICATION = 20_000
PRICE_UTILITY = 10_000
SERVICES = ("consent", "billing", "delivery", "ads")

_ids = itertools.count(1)


def rid(prefix: str = "r") -> str:
    return f"{prefix}-{next(_ids)}-{time.monotonic_ns()}"


def uid(prefix: str) -> str:
    """A business or person id no other test uses (the stack is shared)."""
    return f"{prefix}{next(_ids)}"


details = error_details


def fails(
    code: grpc.StatusCode, reason: str | None = None
) -> AbstractContextManager[dict[str, Any]]:
    """Expect the block's call to fail with `code` (and delivery's ErrorInfo `reason`)."""
    return expect_error(code, reason, domain="delivery.bizmsg")


def retry_delay(d: Mapping[str, Any]) -> float:
    return float(d["RetryInfo"].retry_delay.ToTimedelta().total_seconds())


def wait_until(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy (background relays are asynchronous)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        time.sleep(interval)


@cache
def device_keys() -> tuple[bytes, bytes, bytes]:
    """One valid (identity key, signed prekey, signature) for devices that never decrypt
    (cheap recipients for limit tests: the server only checks the signature)."""
    state = X3DHState.create(IdentityKeyFormat.CURVE_25519, HashFunction.SHA_256, X3DH_INFO)
    b = state.bundle
    return bytes(b.identity_key), bytes(b.signed_pre_key), bytes(b.signed_pre_key_sig)


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
        """Closes the channels; the next call opens fresh ones (no reconnect backoff)."""
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

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

    def client(
        self, principal: str, device_id: str = "d1", *, country: str = "DE", install: int = 1
    ) -> Client:
        """An SDK client with its own store directory (same directory = same device; another
        `install` is the device reinstalled: same id, new keys)."""
        directory = self.store_root / principal.replace(":", "_") / f"{device_id}.{install}"
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

    def bare_device(self, owner: str, device_id: str = "d1") -> None:
        """Registers a device (of "user:<id>" or "business:<id>") with shared keys and no
        one-time prekeys: a cheap recipient for tests that never decrypt."""
        identity, spk, sig = device_keys()
        self.delivery.PublishKeys(
            delivery_pb2.PublishKeysRequest(
                request_id=rid("keys"),
                device_id=device_id,
                identity_key=identity,
                signed_pre_key=delivery_pb2.SignedPreKey(public_key=spk, signature=sig),
                country_code="DE",
            ),
            metadata=metadata_for(owner),
        )

    def raw_send_request(
        self, recipient: str, category: int, request_id: str = "", device_id: str = "d1"
    ) -> delivery_pb2.SendMessageRequest:
        """A SendMessage with opaque bytes for a ciphertext (the server cannot tell)."""
        return delivery_pb2.SendMessageRequest(
            request_id=request_id or rid("send"),
            recipient=recipient,
            category=category,  # type: ignore[arg-type]
            sender_device_id="d1",
            envelopes=[delivery_pb2.DeviceEnvelope(device_id=device_id, ciphertext=b"\x01" * 40)],
        )

    def raw_send(
        self, sender: str, recipient: str, category: int, request_id: str = ""
    ) -> delivery_pb2.SendMessageResponse:
        response: delivery_pb2.SendMessageResponse = self.delivery.SendMessage(
            self.raw_send_request(recipient, category, request_id),
            metadata=metadata_for(sender),
        )
        return response

    # --- consent -----------------------------------------------------------------------------

    def grant(self, person: str, business: str, *categories: int) -> None:
        self.consent.GrantConsent(
            consent_pb2.GrantConsentRequest(
                request_id=rid("grant"),
                person_id=person,
                business_id=business,
                categories=list(categories),  # type: ignore[arg-type]
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
        """EUR prices for every country: marketing, authentication and utility charged."""

        def entry(category: int, micros: int) -> billing_pb2.RateCardEntry:
            return billing_pb2.RateCardEntry(
                category=category,  # type: ignore[arg-type]
                price=common_pb2.Money(amount_micros=micros, currency_code="EUR"),
            )

        self.billing.SetRateCard(
            billing_pb2.SetRateCardRequest(
                request_id=rid("card"),
                currency_code="EUR",
                entries=[
                    entry(MARKETING, PRICE_MARKETING),
                    entry(AUTHENTICATION, PRICE_AUTHENTICATION),
                    entry(UTILITY, PRICE_UTILITY),
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
        account: billing_pb2.Account = self.billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=self.wallets[business]),
            metadata=metadata_for("admin"),
        ).account
        return account

    def money(self, business: str) -> tuple[int, int]:
        """(pending, posted) debits of the business's wallet, in micros."""
        a = self.wallet(business)
        return a.debits_pending.amount_micros, a.debits_posted.amount_micros

    # --- delivery ----------------------------------------------------------------------------

    def events(
        self, principal: str, message_id: str = ""
    ) -> list[delivery_pb2.StreamStatusesResponse]:
        return list(
            self.delivery.StreamStatuses(
                delivery_pb2.StreamStatusesRequest(message_id=message_id),
                metadata=metadata_for(principal),
            )
        )

    def statuses(self, principal: str, message_id: str = "") -> list[int]:
        return [e.status for e in self.events(principal, message_id)]

    def set_limits(self, business: str, per_second: int, tier: int) -> None:
        self.delivery.UpdateMessagingLimits(
            delivery_pb2.UpdateMessagingLimitsRequest(
                request_id=rid("limits"),
                limits=delivery_pb2.MessagingLimits(
                    business_id=business,
                    messages_per_second=per_second,
                    tier=tier,  # type: ignore[arg-type]
                ),
            ),
            metadata=metadata_for("admin"),
        )


class Databases:
    """Read-only looks into every service's database, from the test process."""

    def __init__(self, urls: Mapping[str, str]) -> None:
        self._loop = asyncio.new_event_loop()
        self._dbs = {name: Database(url, pool_size=1) for name, url in urls.items()}

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def query(self, service: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        async def run() -> list[tuple[Any, ...]]:
            async with self._dbs[service].read() as s:
                return [tuple(r) for r in (await s.execute(text(sql), params)).all()]

        result: list[tuple[Any, ...]] = self._run(run())
        return result

    def scalars(self, service: str, statement: Any) -> list[Any]:
        """Runs a SQLAlchemy statement (so column types such as UTCDateTime apply)."""

        async def run() -> list[Any]:
            async with self._dbs[service].read() as s:
                return list((await s.scalars(statement)).all())

        result: list[Any] = self._run(run())
        return result

    def scalar(self, service: str, sql: str, **params: Any) -> Any:
        [(value,)] = self.query(service, sql, **params)
        return value

    def tables(self, service: str) -> list[str]:
        async def run() -> list[str]:
            async with self._dbs[service].engine.connect() as conn:
                names: list[str] = await conn.run_sync(lambda c: inspect(c).get_table_names())
            return names

        result: list[str] = self._run(run())
        return result

    def reset(self) -> None:
        """Closes every connection. Needed around a service restart on SQLite: the last
        connection of the exiting process deletes the WAL file, and a connection kept open
        here would go on reading that deleted file instead of the new one."""
        for db in self._dbs.values():
            self._run(db.engine.dispose())

    def close(self) -> None:
        self.reset()
        self._loop.close()


# Fast background work, so tests wait milliseconds for relays and sweeps, not seconds.
STACK_ENV = {
    "BIZMSG_DELIVERY_RELAY_INTERVAL": "0.05",
    "BIZMSG_DELIVERY_SWEEP_INTERVAL": "0.1",
    "BIZMSG_DELIVERY_POLL_INTERVAL": "0.2",
    "BIZMSG_GRACE_SECONDS": "2",
}


@dataclass
class ProcStack:
    """The four services as processes on one backend, sharing one movable clock."""

    stack: Stack
    procs: dict[str, ServiceProcess]
    db: Databases
    clock_file: Path
    root: Path
    offset: float = 0.0

    def advance(self, seconds: float) -> None:
        """Moves every service's clock forward."""
        self.offset += seconds
        OffsetFileClock.move(self.clock_file, self.offset)

    def service_time(self) -> float:
        """The services' clock now, as epoch seconds."""
        return time.time() + self.offset

    def align(self, period: float, margin: float = 0.02) -> None:
        """Moves the clock just past the next multiple of `period` seconds, so a burst that
        follows starts at the beginning of a fixed window (a second, a minute)."""
        self.advance(period - self.service_time() % period + margin)

    @contextmanager
    def frozen(self) -> Iterator[float]:
        """Holds the services' clock (nearly) still: a thread rewrites the offset every few
        milliseconds so that system time + offset stays at the moment of entry. Lets a
        burst on a loaded machine land in one fixed window. Do not advance inside."""
        at = self.service_time()
        done = threading.Event()

        def pin() -> None:
            while not done.is_set():
                OffsetFileClock.move(self.clock_file, at - time.time())
                done.wait(0.004)

        pinner = threading.Thread(target=pin, daemon=True)
        pinner.start()
        try:
            yield at
        finally:
            done.set()
            pinner.join()
            OffsetFileClock.move(self.clock_file, self.offset)  # time goes on from here

    def stop(self, name: str) -> None:
        self.db.reset()
        assert self.procs[name].terminate() == 0, f"{name} did not drain cleanly"

    def start(self, name: str) -> None:
        self.procs[name].start().wait_serving()
        self.db.reset()
        self.stack.close()

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    def logs(self) -> dict[str, bytes]:
        return {name: p.log_path.read_bytes() for name, p in self.procs.items()}

    def count(self, table: str, where: str = "1=1", **params: Any) -> int:
        """Rows of a delivery table."""
        return int(
            self.db.scalar("delivery", f"SELECT count(*) FROM {table} WHERE {where}", **params)
        )


@contextmanager
def process_stack(root: Path, database_urls: Mapping[str, str]) -> Iterator[ProcStack]:
    clock_file = root / "clock-offset"
    OffsetFileClock.move(clock_file, 0.0)
    procs = start_stack(
        root, database_urls, extra_env={**STACK_ENV, "BIZMSG_CLOCK_FILE": str(clock_file)}
    )
    db = Databases(database_urls)
    stack = Stack(
        procs["consent"].target,
        procs["billing"].target,
        procs["delivery"].target,
        advance=lambda s: None,
        store_root=root / "clients",
    )
    ps = ProcStack(stack, procs, db, clock_file, root)
    stack.advance = ps.advance
    try:
        stack.rate_card()
        yield ps
    finally:
        stack.close()
        db.close()
        for p in procs.values():
            p.request_stop()
        for p in procs.values():
            try:
                p.terminate(timeout=15)
            except Exception:
                p.kill()
