"""BillingService servicer: validate, authorize, convert; the rules live in the domain modules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from google.protobuf.message import Message

from billing_svc import accounts, charges, convert, inputs, pricing, rates, statements, store
from billing_svc.cardcache import RateCards
from billing_svc.directory import Directory
from billing_svc.models import AccountRow, idempotency
from billing_svc.once import Once, Tx
from bizmsg.billing.v1 import billing_pb2 as pb
from bizmsg.billing.v1 import billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.kit import multiplex
from bizmsg.kit.auth import Principal, current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import PermissionDenied
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import from_duration, from_timestamp, to_timestamp
from bizmsg.kit.validation import (
    PageToken,
    Validator,
    check_enum,
    check_id,
    check_request_id,
    check_text,
    page_size,
)

R = TypeVar("R", bound=Message)
MAX_TIMEOUT = timedelta(days=90)
# A rate card may say "from now" with a little clock skew between caller and server.
EFFECTIVE_GRACE = timedelta(minutes=1)


def _require(allowed: bool, what: str) -> None:
    if not allowed:
        raise PermissionDenied(message=f"{current_principal()} may not {what}")


def _only_service(name: str, what: str) -> None:
    _require(current_principal().is_service(name), what)


def _can_read(p: Principal, row: AccountRow) -> bool:
    if p.is_admin or str(p) == row.owner:
        return True
    # ads checks that an advertiser can pay before serving its ads.
    return p.is_service("ads") and row.kind == pb.ACCOUNT_KIND_ADVERTISER_WALLET


class BillingServicer(billing_pb2_grpc.BillingServiceServicer):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        authorization_timeout: timedelta,
        *,
        revenue_shards: int = 1,
    ) -> None:
        self.db = db
        self.clock = clock
        self.once = Once(db, idempotency, clock)
        self.authorization_timeout = authorization_timeout
        # Identities of accounts and rate-card versions: immutable, so safe to keep (see there).
        self.directory = Directory(db, revenue_shards=revenue_shards)
        self.cards = RateCards()

    async def _once(
        self, method: str, request: Any, response_type: type[R], work: Callable[[Any], Awaitable[R]]
    ) -> R:
        """Run a mutating RPC exactly once per request_id; work gets an ORM session."""

        async def in_tx(tx: Tx) -> R:
            return await work(await tx.session())

        return await self.once.run(method, request, response_type, in_tx)

    # Accounts

    async def CreateAccount(self, request: pb.CreateAccountRequest, context: Any) -> Any:
        v = Validator()
        check_request_id(v, request.request_id)
        owner = inputs.principal(v, "owner", request.owner)
        check_enum(
            v,
            "kind",
            request.kind,
            pb.AccountKind,
            allowed=tuple(accounts.OWNER_KIND),
        )
        inputs.currency(v, "currency_code", request.currency_code)
        limit = request.credit_limit
        if request.HasField("credit_limit"):
            inputs.amount(v, "credit_limit", limit, positive=False)
            v.check(
                limit.currency_code == request.currency_code,
                "credit_limit.currency_code",
                "must be the account's currency",
            )
        if owner is not None and request.kind in accounts.OWNER_KIND:
            v.check(
                accounts.owner_matches(request.kind, request.owner),
                "owner",
                f"cannot own a {accounts.kind_name(request.kind)}",
            )
        v.raise_if_any()
        p = current_principal()
        _require(
            p.is_admin or (str(p) == request.owner and limit.amount_micros == 0),
            "open this account (others open only their own prepaid wallet)",
        )

        async def work(session: Any) -> pb.CreateAccountResponse:
            row = await accounts.create_account(
                session,
                self.clock.now(),
                owner=request.owner,
                kind=request.kind,
                currency=request.currency_code,
                credit_limit=limit.amount_micros,
            )
            return pb.CreateAccountResponse(account=convert.account(row))

        return await self._once("CreateAccount", request, pb.CreateAccountResponse, work)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Any) -> Any:
        v = Validator()
        check_id(v, "account_id", request.account_id)
        v.raise_if_any()
        async with self.db.read() as session:
            row = await accounts.load(session, request.account_id)
        _require(_can_read(current_principal(), row), "read this account")
        return pb.GetAccountResponse(account=convert.account(row))

    async def ListAccounts(self, request: pb.ListAccountsRequest, context: Any) -> Any:
        v = Validator()
        inputs.principal(v, "owner", request.owner)
        size = page_size(v, request.page_size)
        token = PageToken.decode(v, "page_token", request.page_token)
        after = token.get("after", "")
        v.check(isinstance(after, str), "page_token", "is not a page token this service issued")
        v.raise_if_any()
        p = current_principal()
        _require(p.is_admin or str(p) == request.owner, "list these accounts")
        async with self.db.read() as session:
            rows = await store.list_accounts(session, request.owner, str(after), size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return pb.ListAccountsResponse(
            accounts=[convert.account(r) for r in rows],
            next_page_token=PageToken.encode({"after": rows[-1].id}) if more else "",
        )

    async def TopUp(self, request: pb.TopUpRequest, context: Any) -> Any:
        _require(current_principal().is_admin, "top up accounts")
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "account_id", request.account_id)
        inputs.amount(v, "amount", request.amount)
        check_text(v, "external_reference", request.external_reference, required=True, max_len=200)
        v.raise_if_any()

        async def work(session: Any) -> pb.TopUpResponse:
            done = await accounts.top_up(
                session,
                self.clock.now(),
                account_id=request.account_id,
                amount=request.amount.amount_micros,
                currency=request.amount.currency_code,
                external_reference=request.external_reference,
            )
            return pb.TopUpResponse(
                transfer_id=done.transfer_id, account=convert.account(done.account, done.balances)
            )

        return await self._once("TopUp", request, pb.TopUpResponse, work)

    # Rate cards and quotes

    async def SetRateCard(self, request: pb.SetRateCardRequest, context: Any) -> Any:
        _require(current_principal().is_admin, "set rate cards")
        now = self.clock.now()
        v = Validator()
        check_request_id(v, request.request_id)
        inputs.currency(v, "currency_code", request.currency_code)
        inputs.timestamp(v, "effective_time", request.effective_time)
        v.check(len(request.entries) > 0, "entries", "a rate card needs at least one price")
        v.check(len(request.entries) <= 5000, "entries", "at most 5000 prices")
        seen: set[tuple[int, str]] = set()
        entries: list[rates.Entry] = []
        for i, e in enumerate(request.entries):
            f = f"entries[{i}]"
            check_enum(v, f"{f}.category", e.category, common_pb2.Category)
            inputs.country(v, f"{f}.recipient_country", e.recipient_country, allow_empty=True)
            inputs.amount(v, f"{f}.price", e.price, positive=False)
            v.check(
                e.price.currency_code == request.currency_code,
                f"{f}.price.currency_code",
                "must be the card's currency",
            )
            key = (e.category, e.recipient_country)
            v.check(key not in seen, f, "repeats a (category, recipient_country) pair")
            seen.add(key)
            entries.append(rates.Entry(e.category, e.recipient_country, e.price.amount_micros))
        v.raise_if_any()
        effective = from_timestamp(request.effective_time) or now

        async def work(session: Any) -> pb.SetRateCardResponse:
            # Checked here, after the replay lookup, so a retry later still gets its answer.
            v.check(
                effective >= now - EFFECTIVE_GRACE, "effective_time", "must not lie in the past"
            )
            v.raise_if_any()
            card = await rates.set_rate_card(
                session,
                now,
                currency=request.currency_code,
                effective_time=effective,
                entries=entries,
            )
            return pb.SetRateCardResponse(rate_card=convert.rate_card(card))

        response = await self._once("SetRateCard", request, pb.SetRateCardResponse, work)
        # Other replicas notice by the version number; this one need not even try first.
        self.cards.forget(request.currency_code)
        return response

    async def GetRateCard(self, request: pb.GetRateCardRequest, context: Any) -> Any:
        v = Validator()
        inputs.currency(v, "currency_code", request.currency_code)
        inputs.timestamp(v, "at_time", request.at_time)
        v.check(request.version >= 0, "version", "must not be negative")
        v.raise_if_any()
        at = from_timestamp(request.at_time) or self.clock.now()
        async with self.db.read() as session:
            card = await rates.get_rate_card(
                session, currency=request.currency_code, at=at, version=request.version
            )
        return pb.GetRateCardResponse(rate_card=convert.rate_card(card))

    def _check_message(self, v: Validator, request: Any) -> None:
        check_id(v, "business_id", request.business_id)
        inputs.country(v, "recipient_country", request.recipient_country)
        check_enum(v, "category", request.category, common_pb2.Category)
        check_enum(v, "window", request.window, common_pb2.WindowKind)

    async def GetQuote(self, request: pb.GetQuoteRequest, context: Any) -> Any:
        p = current_principal()
        _require(
            p.is_admin or p.is_service("delivery") or str(p) == f"business:{request.business_id}",
            "quote for this business",
        )
        v = Validator()
        self._check_message(v, request)
        v.raise_if_any()
        async with self.db.read() as session:
            q = await pricing.quote(
                await session.connection(),
                self.clock.now(),
                self.directory,
                self.cards,
                business_id=request.business_id,
                recipient_country=request.recipient_country,
                category=request.category,
                window=request.window,
            )
        return pb.GetQuoteResponse(
            price=convert.money(q.amount, q.currency),
            free=q.free,
            rule=q.rule,  # type: ignore[arg-type]
            rate_card_version=q.rate_card_version,
        )

    # Message charges

    async def AuthorizeCharge(self, request: pb.AuthorizeChargeRequest, context: Any) -> Any:
        _only_service("delivery", "authorize message charges")
        v = Validator()
        check_request_id(v, request.request_id)
        self._check_message(v, request)
        timeout = self.authorization_timeout
        if request.HasField("timeout"):
            ok = 0 < request.timeout.seconds < MAX_TIMEOUT.total_seconds()
            if v.check(ok, "timeout", f"must be positive and under {MAX_TIMEOUT.days} days"):
                timeout = from_duration(request.timeout)
        v.raise_if_any()

        async def work(tx: Tx) -> pb.AuthorizeChargeResponse:
            response = pb.AuthorizeChargeResponse()

            async def claim(auth: charges.Authorization) -> None:
                response.CopyFrom(convert.authorization(auth))
                await tx.save(response)

            await charges.authorize(
                tx.conn,
                self.clock.now(),
                self.directory,
                self.cards,
                business_id=request.business_id,
                recipient_country=request.recipient_country,
                category=request.category,
                window=request.window,
                hold=timeout,
                claim=claim,
            )
            return response

        return await self.once.run("AuthorizeCharge", request, pb.AuthorizeChargeResponse, work)

    def AuthorizeChargeStream(
        self, request_iterator: AsyncIterator[pb.AuthorizeChargeStreamRequest], context: Any
    ) -> AsyncIterator[pb.AuthorizeChargeStreamResponse]:
        # Each item is an AuthorizeCharge, run by the method above (delivery's hot path).
        return multiplex.serve(
            request_iterator,
            context,
            "AuthorizeCharge",
            self.AuthorizeCharge,
            pb.AuthorizeChargeStreamResponse,
        )

    async def CaptureCharge(self, request: pb.CaptureChargeRequest, context: Any) -> Any:
        _only_service("delivery", "capture message charges")
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "authorization_id", request.authorization_id)
        v.raise_if_any()

        async def work(tx: Tx) -> pb.CaptureChargeResponse:
            response = pb.CaptureChargeResponse()

            async def claim(r: charges.Resolution) -> None:
                response.CopyFrom(convert.resolution(pb.CaptureChargeResponse, r))
                await tx.save(response)

            await charges.capture(tx.conn, self.clock.now(), request.authorization_id, claim=claim)
            return response

        return await self.once.run("CaptureCharge", request, pb.CaptureChargeResponse, work)

    async def VoidCharge(self, request: pb.VoidChargeRequest, context: Any) -> Any:
        _only_service("delivery", "void message charges")
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "authorization_id", request.authorization_id)
        check_enum(v, "reason", request.reason, pb.VoidReason)
        v.raise_if_any()

        async def work(tx: Tx) -> pb.VoidChargeResponse:
            response = pb.VoidChargeResponse()

            async def claim(r: charges.Resolution) -> None:
                response.CopyFrom(convert.resolution(pb.VoidChargeResponse, r))
                await tx.save(response)

            await charges.void(
                tx.conn, self.clock.now(), request.authorization_id, request.reason, claim=claim
            )
            return response

        return await self.once.run("VoidCharge", request, pb.VoidChargeResponse, work)

    # Ad charges

    async def ChargeAdEvent(self, request: pb.ChargeAdEventRequest, context: Any) -> Any:
        _only_service("ads", "charge ad events")
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "campaign_id", request.campaign_id)
        check_id(v, "account_id", request.account_id)
        check_enum(v, "kind", request.kind, pb.AdEventKind)
        inputs.amount(v, "amount", request.amount)
        v.raise_if_any()

        async def work(tx: Tx) -> pb.ChargeAdEventResponse:
            c = await charges.charge_ad_event(
                tx.conn,
                self.clock.now(),
                self.directory,
                event_id=request.request_id,
                campaign_id=request.campaign_id,
                account_id=request.account_id,
                kind=request.kind,
                amount=request.amount.amount_micros,
                currency=request.amount.currency_code,
            )
            return pb.ChargeAdEventResponse(
                transfer_id=c.transfer_id, amount=convert.money(c.amount, c.currency)
            )

        return await self.once.run("ChargeAdEvent", request, pb.ChargeAdEventResponse, work)

    def ChargeAdEventStream(
        self, request_iterator: AsyncIterator[pb.ChargeAdEventStreamRequest], context: Any
    ) -> AsyncIterator[pb.ChargeAdEventStreamResponse]:
        # Each item is a ChargeAdEvent, run by the method above (ads' hot path).
        return multiplex.serve(
            request_iterator,
            context,
            "ChargeAdEvent",
            self.ChargeAdEvent,
            pb.ChargeAdEventStreamResponse,
        )

    # Reading the ledger

    def _period(self, v: Validator, request: Any) -> tuple[datetime | None, datetime | None]:
        inputs.timestamp(v, "start_time", request.start_time)
        inputs.timestamp(v, "end_time", request.end_time)
        if v.violations:
            return None, None
        start, end = from_timestamp(request.start_time), from_timestamp(request.end_time)
        inputs.period(v, start, end)
        return start, end

    async def _readable(self, account_id: str) -> AccountRow:
        async with self.db.read() as session:
            row = await accounts.load(session, account_id)
        _require(_can_read(current_principal(), row), "read this account")
        return row

    async def ListTransfers(self, request: pb.ListTransfersRequest, context: Any) -> Any:
        v = Validator()
        check_id(v, "account_id", request.account_id)
        start, end = self._period(v, request)
        size = page_size(v, request.page_size)
        token = PageToken.decode(v, "page_token", request.page_token)
        after: tuple[datetime, str] | None = None
        if token:
            try:
                after = (datetime.fromisoformat(token["t"]), str(token["id"]))
            except (KeyError, TypeError, ValueError):
                v.add("page_token", "is not a page token this service issued")
        v.raise_if_any()
        await self._readable(request.account_id)
        async with self.db.read() as session:
            rows = await store.list_transfers(
                session, request.account_id, start=start, end=end, after=after, limit=size + 1
            )
        more = len(rows) > size
        rows = rows[:size]
        next_token = ""
        if more:
            last = rows[-1]
            next_token = PageToken.encode({"t": last.create_time.isoformat(), "id": last.id})
        return pb.ListTransfersResponse(
            transfers=[convert.transfer(r) for r in rows], next_page_token=next_token
        )

    async def GetStatement(self, request: pb.GetStatementRequest, context: Any) -> Any:
        v = Validator()
        check_id(v, "account_id", request.account_id)
        start, end = self._period(v, request)
        v.raise_if_any()
        row = await self._readable(request.account_id)
        async with self.db.read() as session:
            s = await statements.statement(session, row.id, start, end)
        c = row.currency
        return pb.GetStatementResponse(
            statement=pb.Statement(
                account_id=row.id,
                currency_code=c,
                start_time=request.start_time,
                end_time=to_timestamp(end or self.clock.now()),
                opening_balance=convert.money(s.opening, c),
                closing_balance=convert.money(s.closing, c),
                lines=convert.statement_lines(s.lines, c),
                total_debits=convert.money(s.total_debits, c),
                total_credits=convert.money(s.total_credits, c),
            )
        )
