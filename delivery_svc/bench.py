"""What delivery itself costs per SendMessage and per AckMessages: CPU and SQL statements.

    python -m delivery_svc.bench [--database-url URL] [--sends 1000] [--concurrency 16]

Delivery runs as a real process; consent and billing are null servers in this process that
answer at once (allowed; an authorization with a price), so the figures are delivery's own
and do not move when the other services change. The delivery process counts every SQL
statement (the `bizmsg bench --profile` counter); its CPU comes from /proc. Phases: sends
(one business to many people), acks (one message per call, plus the CAPTURE relay they
cause, waited for until billing has seen every capture), and an idle second (what the
background jobs cost when there is nothing to do). `bizmsg bench` is the end-to-end figure.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bizmsg.bench.profile import SITECUSTOMIZE, py_spy, summarise
from bizmsg.bench.seed import DeviceKeys
from bizmsg.billing.v1 import billing_pb2, billing_pb2_grpc
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.delivery.v1 import delivery_pb2, delivery_pb2_grpc
from bizmsg.kit.processes import ServiceProcess, free_port
from bizmsg.kit.testing import metadata_for

BUSINESS = "bench-biz"
DEVICE = "d1"
PRICE = common_pb2.Money(amount_micros=50_000, currency_code="EUR")


class _Consent(consent_pb2_grpc.ConsentServiceServicer):
    async def CheckConsent(self, request: Any, context: Any) -> Any:
        return consent_pb2.CheckConsentResponse(
            allowed=True,
            reason=consent_pb2.CONSENT_DECISION_REASON_ALLOWED,
            window=common_pb2.Window(kind=common_pb2.WINDOW_KIND_NONE),
        )

    async def RecordUserMessage(self, request: Any, context: Any) -> Any:
        return consent_pb2.RecordUserMessageResponse()

    async def RecordBusinessReply(self, request: Any, context: Any) -> Any:
        return consent_pb2.RecordBusinessReplyResponse()


class _Billing(billing_pb2_grpc.BillingServiceServicer):
    def __init__(self) -> None:
        self.captured: set[str] = set()
        self._changed = threading.Condition()

    async def all_captured(self, n: int) -> None:
        """Returns once `n` distinct authorizations were captured."""

        def wait() -> None:
            with self._changed:
                self._changed.wait_for(lambda: len(self.captured) >= n, timeout=120)

        await asyncio.to_thread(wait)

    async def AuthorizeCharge(self, request: Any, context: Any) -> Any:
        return billing_pb2.AuthorizeChargeResponse(
            authorization_id=f"auth-{request.request_id}", price=PRICE
        )

    async def CaptureCharge(self, request: Any, context: Any) -> Any:
        with self._changed:
            self.captured.add(request.authorization_id)
            self._changed.notify_all()
        return billing_pb2.CaptureChargeResponse()

    async def VoidCharge(self, request: Any, context: Any) -> Any:
        return billing_pb2.VoidChargeResponse()


class NullDependencies:
    """Consent and billing that answer at once, served on their own loop in a thread."""

    def __init__(self) -> None:
        # Only what delivery calls is answered; the other RPCs stay UNIMPLEMENTED.
        self.billing = _Billing()  # type: ignore[abstract]
        self.consent_port = free_port()
        self.billing_port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[grpc.aio.Server] = []

    def _run(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _start(self) -> None:
        consent = grpc.aio.server()
        consent_pb2_grpc.add_ConsentServiceServicer_to_server(_Consent(), consent)  # type: ignore[abstract]
        billing = grpc.aio.server()
        billing_pb2_grpc.add_BillingServiceServicer_to_server(self.billing, billing)
        for server, port in ((consent, self.consent_port), (billing, self.billing_port)):
            server.add_insecure_port(f"127.0.0.1:{port}")
            await server.start()
            self._servers.append(server)

    def start(self) -> NullDependencies:
        self._thread.start()
        self._run(self._start())
        return self

    def stop(self) -> None:
        for server in self._servers:
            self._run(server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


class Counted:
    """The delivery process: its CPU seconds and the SQL statements it sent, by statement."""

    def __init__(self, proc: ServiceProcess, out_prefix: Path) -> None:
        self.proc = proc
        self.prefix = out_prefix
        self._dumps = itertools.count()

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def statements(self) -> Counter[str]:
        """Statements since the last call (the counter resets on every dump)."""
        path = Path(f"{self.prefix}.{self.pid}.{next(self._dumps)}.json")
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not path.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the delivery process did not dump its statement counts")
            time.sleep(0.02)
        return Counter({s: c for s, c in json.loads(path.read_text())})


async def call_all(n: int, concurrency: int, call: Callable[[int], Awaitable[Any]]) -> None:
    """`call(0)` to `call(n - 1)`, `concurrency` at a time."""
    queue = iter(range(n))

    async def worker() -> None:
        for i in queue:
            await call(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def _person(i: int) -> str:
    return f"bp{i}"


async def seed_people(
    stub: delivery_pb2_grpc.DeliveryServiceStub,
    people: int,
    *,
    tier: delivery_pb2.MessagingTier.ValueType = delivery_pb2.MESSAGING_TIER_UNLIMITED,
    person: Callable[[int], str] = _person,
) -> None:
    """BUSINESS on `tier` (1,000 messages a second), and `people` people (user ids
    `person(i)`) with a published device each."""
    await stub.UpdateMessagingLimits(
        delivery_pb2.UpdateMessagingLimitsRequest(
            request_id=str(uuid.uuid4()),
            limits=delivery_pb2.MessagingLimits(
                business_id=BUSINESS,
                messages_per_second=1000,
                tier=tier,
            ),
        ),
        metadata=metadata_for("admin"),
    )
    keys = DeviceKeys.generate()

    async def publish(i: int) -> None:
        await stub.PublishKeys(
            delivery_pb2.PublishKeysRequest(
                request_id=str(uuid.uuid4()),
                device_id=DEVICE,
                identity_key=keys.identity_key,
                signed_pre_key=delivery_pb2.SignedPreKey(
                    public_key=keys.signed_pre_key, signature=keys.signature
                ),
                country_code="DE",
            ),
            metadata=metadata_for(f"user:{person(i)}"),
        )

    await call_all(people, 8, publish)


def _phase(
    name: str, calls: int, seconds: float, cpu: float, stmts: Counter[str]
) -> dict[str, Any]:
    total = sum(stmts.values())
    return {
        "phase": name,
        "calls": calls,
        "calls_per_s": round(calls / seconds, 1) if seconds else None,
        "cpu_ms_per_call": round(1000 * cpu / calls, 2) if calls else None,
        "cpu_s": round(cpu, 3),
        "statements_per_call": round(total / calls, 2) if calls else None,
        "statements": total,
        "by_statement": stmts.most_common(),
    }


def _spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy (if installed) sampling the delivery process while it holds the GIL."""
    spy = py_spy()
    if spy is None:
        return None
    return subprocess.Popen(
        [
            *(spy, "record", "--gil", "--nonblocking", "-r", "200"),
            *("-d", str(max(1, round(seconds))), "-f", "raw", "-o", str(out), "--pid", str(pid)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _drive(
    target: str,
    delivery: Counted,
    deps: NullDependencies,
    sends: int,
    concurrency: int,
    profile: Path | None,
) -> list[dict[str, Any]]:
    people = max(1, min(sends, 200))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        await seed_people(stub, people)
        business = metadata_for(f"business:{BUSINESS}")
        person_md = {i: metadata_for(f"user:{_person(i)}") for i in range(people)}
        sent: list[tuple[int, str]] = []

        async def send(i: int) -> None:
            response = await stub.SendMessage(
                delivery_pb2.SendMessageRequest(
                    request_id=str(uuid.uuid4()),
                    recipient=f"user:{_person(i % people)}",
                    category=common_pb2.CATEGORY_MARKETING,
                    sender_device_id="api",
                    envelopes=[
                        delivery_pb2.DeviceEnvelope(device_id=DEVICE, ciphertext=os.urandom(256))
                    ],
                ),
                metadata=business,
            )
            sent.append((i % people, response.message_id))

        async def ack(i: int) -> None:
            person, message_id = sent[i]
            await stub.AckMessages(
                delivery_pb2.AckMessagesRequest(
                    request_id=str(uuid.uuid4()), device_id=DEVICE, message_ids=[message_id]
                ),
                metadata=person_md[person],
            )

        async def timed(name: str, n: int, call: Callable[[int], Awaitable[Any]]) -> dict[str, Any]:
            await asyncio.sleep(0.3)  # let the background jobs settle
            delivery.statements()
            spy = _spy(delivery.pid, profile / f"{name}.txt", n / 60) if profile else None
            cpu0, t0 = delivery.cpu(), time.monotonic()
            await call_all(n, concurrency, call)
            if name == "ack":
                await deps.billing.all_captured(n)
            t1 = time.monotonic()
            result = _phase(name, n, t1 - t0, delivery.cpu() - cpu0, delivery.statements())
            if spy is not None and profile is not None:
                await asyncio.to_thread(spy.wait)
                result["cpu_top"] = summarise(profile / f"{name}.txt", top=15)
            return result

        results = [await timed("send", sends, send), await timed("ack", len(sent), ack)]
        await asyncio.sleep(0.3)
        delivery.statements()
        cpu0 = delivery.cpu()
        await asyncio.sleep(1.0)
        idle = _phase("idle 1 s", 1, 1.0, delivery.cpu() - cpu0, delivery.statements())
        results.append(idle)
        return results


def run(
    database_url: str | None, sends: int, concurrency: int, profile: Path | None = None
) -> list[dict[str, Any]]:
    deps = NullDependencies().start()
    with tempfile.TemporaryDirectory(prefix="delivery-bench-") as tmp:
        work = Path(tmp)
        (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
        url = database_url or f"sqlite+aiosqlite:///{work / 'delivery.db'}"
        env = {
            "BIZMSG_DELIVERY_DATABASE_URL": url,
            "BIZMSG_DATA_DIR": str(work),
            "BIZMSG_CONSENT_TARGET": f"127.0.0.1:{deps.consent_port}",
            "BIZMSG_BILLING_TARGET": f"127.0.0.1:{deps.billing_port}",
            "BIZMSG_DELIVERY_PAIR_LIMIT_PER_MINUTE": "100000000",
            "BIZMSG_BENCH_SQLCOUNT": str(work / "sql"),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(work), os.environ.get("PYTHONPATH")) if p
            ),
        }
        proc = ServiceProcess("delivery", env, work / "delivery.log")
        try:
            proc.start().wait_serving()
            return asyncio.run(
                _drive(proc.target, Counted(proc, work / "sql"), deps, sends, concurrency, profile)
            )
        finally:
            proc.terminate(timeout=15)
            deps.stop()


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'phase':<10} {'calls':>6} {'calls/s':>8} {'CPU ms/call':>12} {'SQL/call':>9}",
        "-" * 49,
    ]
    for r in results:
        lines.append(
            f"{r['phase']:<10} {r['calls']:>6} {r['calls_per_s'] or '-':>8} "
            f"{r['cpu_ms_per_call']:>12} {r['statements_per_call']:>9}"
        )
    for r in results:
        for kind, shares in r.get("cpu_top", {}).items():
            lines.append(f"\n{r['phase']}: py-spy samples by {kind} (%)")
            lines.extend(f"  {share:5.1f}  {what}" for what, share in shares)
        lines.append(f"\n{r['phase']}: statements")
        calls = r["calls"] or 1
        for statement, count in r["by_statement"]:
            lines.append(f"  {count / calls:7.2f}  {statement}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", help="PostgreSQL database (default: a fresh SQLite file)")
    p.add_argument("--sends", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also sample delivery with py-spy (raw stacks in DIR; slows it down)",
    )
    ns = p.parse_args()
    if ns.profile:
        ns.profile.mkdir(parents=True, exist_ok=True)
    results = run(ns.database_url, ns.sends, ns.concurrency, ns.profile)
    print(_table(results))
    if ns.json:
        ns.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
