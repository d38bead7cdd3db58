"""One bench run: start everything, seed, check each scenario answers, sweep, optionally soak."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bizmsg.bench import loadgen, procs, shim
from bizmsg.bench.null_pipeline import STATS_PATH
from bizmsg.bench.profile import Profiler
from bizmsg.bench.scenarios import SCENARIOS, Scenario, stamp
from bizmsg.bench.seed import Seeded, seed
from bizmsg.bench.stack import KIT_NAMES, NULL_NAMES, Stack
from bizmsg.bench.verify import LogWatch, count_rows
from bizmsg.kit.testing import metadata_for, token_for


@dataclass(frozen=True)
class Plan:
    levels: tuple[int, ...]  # concurrency sweep of the pipelines (null, kit, SendMessage)
    single_levels: tuple[int, ...]  # concurrency of the services measured alone
    duration: int  # measured seconds per point
    warmup: int  # seconds before measuring, per slice
    people: int
    businesses: int
    campaigns: int
    soak_minutes: float = 0.0
    scenarios: tuple[str, ...] = tuple(s.key for s in SCENARIOS)
    # A pipeline's point is measured in this many slices of duration/slices seconds, taken in
    # rounds over every level and pipeline (see Runner.run).
    slices: int = 1

    def runs(self) -> int:
        """h2load runs of the whole plan (each pipeline point is `slices` of them)."""
        return sum(
            len(self.levels) * self.slices if s.pipeline else len(self.single_levels)
            for s in SCENARIOS
            if s.key in self.scenarios
        )


QUICK = Plan(
    levels=(4, 16, 64), single_levels=(16,), duration=2, warmup=1, people=100, businesses=1,
    campaigns=5,
)  # fmt: skip
FULL = Plan(
    levels=(1, 4, 16, 64, 128), single_levels=(4, 16, 64), duration=10, warmup=1, people=2000,
    businesses=1, campaigns=20, slices=5,
)  # fmt: skip


@dataclass
class Point:
    concurrency: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests: int  # completed in the measured period (h2load)
    codes: dict[str, int]  # gRPC outcomes of the whole run (warm-up included), from the service
    ok_fraction: float
    stored: int | None  # rows the run added to the scenario's table (SendMessage: messages)
    loadgen_cpu_s: float
    loadgen_wall_s: float
    service_cpu_s: dict[str, float]
    cpu_ms_per_call: dict[str, float]  # each service's CPU per call of the scenario
    peak_rss_mb: dict[str, float]
    profile: dict[str, Any] | None = None  # with --profile: SQL per call and CPU hot spots
    slices: int = 1  # h2load runs it was measured in (Plan.slices)
    stolen_pct: float = 0.0  # of the CPUs' time during its runs, taken by the hypervisor


@dataclass
class ScenarioResult:
    key: str
    title: str
    sample: str = ""  # what one Python-client call answered before the sweep
    error: str = ""  # why the scenario was not measured
    points: list[Point] = field(default_factory=list)

    def peak(self) -> Point | None:
        good = [p for p in self.points if p.ok_fraction >= 0.99]
        return max(good, key=lambda p: p.rps) if good else None


@dataclass
class Soak:
    minutes: float
    target_rps: float
    achieved_rps: float
    codes: dict[str, int]
    rss_start_mb: dict[str, float]
    rss_end_mb: dict[str, float]
    growth_pct: dict[str, float]
    samples: list[dict[str, float]]


@dataclass
class Outcome:
    plan: Plan
    database: str
    unique_ids: bool
    seeded: Seeded | None
    scenarios: dict[str, ScenarioResult]
    soak: Soak | None
    loadgen_version: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    stolen_pct: float  # of the CPUs' time over the whole run, taken by the hypervisor
    seconds: float
    errors_logged: list[str]
    stop_problems: list[str]
    stop_seconds: float


Progress = Callable[[str, int], None]
SETTLE_SECONDS = 2  # unmeasured sends before PostgreSQL's ANALYZE (Runner._settle)


class BenchError(RuntimeError):
    """The bench could not run (not a slow or failing service: those are figures)."""


class Runner:
    def __init__(
        self,
        plan: Plan,
        work_dir: Path,
        database_url: str | None,
        profile_dir: Path | None = None,
    ) -> None:
        self.plan = plan
        self.profiler = Profiler(profile_dir) if profile_dir else None
        self.work_dir = work_dir
        self.database_url = database_url
        self.stack = Stack(work_dir)
        self.shim = shim.build(work_dir / "shim")
        self.serial = 0

    def run(self, progress: Progress) -> Outcome:
        started = time.monotonic()
        load_before = os.getloadavg()
        ticks_before = procs.machine_ticks()
        version = _h2load_version()
        try:
            progress("starting services", 0)
            if "null" in self.plan.scenarios:
                self.stack.start_null()
            if "kit" in self.plan.scenarios:
                self.stack.start_kit()
            real = any(k not in ("null", "kit") for k in self.plan.scenarios)
            if real:
                self.stack.start_services(
                    self.database_url, self.profiler.env() if self.profiler else None
                )
            watch = LogWatch(self.stack.logs())
            mark = watch.mark()
            seeded = None
            if real:
                progress("seeding", 0)
                try:
                    seeded = asyncio.run(
                        seed(
                            {n: self.stack.target(n) for n in self.stack.services},
                            people=self.plan.people,
                            businesses=self.plan.businesses,
                            campaigns=self.plan.campaigns,
                        )
                    )
                except grpc.aio.AioRpcError as e:
                    raise BenchError(f"seeding failed: {e.code().name}: {e.details()}") from e
            if real and self.database_url:
                progress("settling PostgreSQL", 0)
                self._settle()
            chosen = [sc for sc in SCENARIOS if sc.key in self.plan.scenarios]
            results = {sc.key: self._sampled(sc, progress) for sc in chosen}
            pipelines = [sc for sc in chosen if sc.pipeline and not results[sc.key].error]
            self._sweep(pipelines, self.plan.levels, self.plan.slices, results, watch, progress)
            for sc in chosen:
                if not sc.pipeline and not results[sc.key].error:
                    self._sweep([sc], self.plan.single_levels, 1, results, watch, progress)
            soak = None
            send = results.get("send")
            if self.plan.soak_minutes > 0 and send is not None and send.peak() is not None:
                progress("soak", 0)
                soak = self._soak(send, watch)
            errors = watch.errors(mark) if real else []
        finally:
            progress("stopping", 0)
            stopping = time.monotonic()
            self.stack.stop()
            stop_seconds = time.monotonic() - stopping
        return Outcome(
            self.plan,
            "postgresql" if self.database_url else "sqlite",
            self.shim is not None,
            seeded,
            results,
            soak,
            version,
            load_before,
            os.getloadavg(),
            procs.stolen_pct(ticks_before, procs.machine_ticks()),
            time.monotonic() - started,
            errors,
            self.stack.stop_problems,
            stop_seconds,
        )

    # --- one scenario ------------------------------------------------------------------

    def _sampled(self, sc: Scenario, progress: Progress) -> ScenarioResult:
        """The scenario's result, with its sample call made (or why it cannot be measured)."""
        result = ScenarioResult(sc.key, sc.title)
        try:
            result.sample = self._sample(sc)
        except grpc.RpcError as e:
            result.error = f"sample call failed: {e.code().name}: {e.details()}"
            progress(f"{sc.key}: skipped", len(self._levels(sc)))
        return result

    def _sweep(
        self,
        scenarios: list[Scenario],
        levels: tuple[int, ...],
        slices: int,
        results: dict[str, ScenarioResult],
        watch: LogWatch,
        progress: Progress,
    ) -> None:
        """One point per scenario and level, each measured in `slices` runs taken in rounds:
        every round runs each level once, and at each level each scenario in turn.

        This machine is a shared VM whose speed drifts (the CPU a call costs has changed by 2x
        within a minute, and the host steals a share of the CPUs that comes and goes). Taking
        turns at a level makes the pipelines' ratio there compare the same moments; spreading
        each level over the whole sweep makes the peaks of different levels compare the same
        stretch of time too (swept level by level, the null pipeline once peaked at c=16 in
        the sweep's second minute at 1,567/s and ran 916/s at c=128 in its fifth, where an
        earlier run of the same tree gave 1,756/s). Profiling watches one unbroken window."""
        slices = 1 if self.profiler else slices
        seconds = max(1, self.plan.duration // slices)
        taken: dict[tuple[str, int], list[_Slice]] = {}
        for i in range(slices):
            part = f" {i + 1}/{slices}" if slices > 1 else ""
            for level in levels:
                for sc in scenarios:
                    progress(f"{sc.key} c={level}{part}", 0)
                    one = self._slice(sc, level, watch, seconds)
                    taken.setdefault((sc.key, level), []).append(one)
                    progress(f"{sc.key} c={level}{part}: {one.result.rps:.0f}/s", 1)
        for level in levels:
            for sc in scenarios:
                results[sc.key].points.append(_point(level, taken[(sc.key, level)]))

    def _settle(self) -> None:
        """Bring PostgreSQL to a running deployment's state before measuring: some sends
        (unmeasured) fill the tables the seed leaves empty, then ANALYZE gives the planner
        statistics, as autovacuum does a minute into a new deployment. Without it the
        services' prepared statements keep the generic plans PostgreSQL cached while those
        tables were empty, where two indexes cost the same, and a send's read scanned every
        conversation of the business (plans seen with auto_explain; log_statement_stats: 0.36
        ms of the server's CPU per execution of that read, 0.07 ms after ANALYZE)."""
        sc = next(s for s in SCENARIOS if s.key == "send")
        load = self._load(sc, sc.target, concurrency=16, duration=SETTLE_SECONDS)
        loadgen.run(load, self.work_dir / "runs" / "settle", self.shim)
        self.stack.analyze()

    def _load(
        self,
        sc: Scenario,
        target: str,
        *,
        concurrency: int,
        duration: float,
        warmup: float = 0.0,
        rate: float | None = None,
    ) -> loadgen.Load:
        """h2load's run of `sc` against the service `target`, with a fresh request_id tag."""
        return loadgen.Load(
            target=self.stack.target(target),
            path=sc.path,
            message=sc.message(self._tag()),
            token=token_for(sc.principal),
            concurrency=concurrency,
            duration=duration,
            warmup=warmup,
            rate=rate,
            pick=self.plan.people,
        )

    def _levels(self, sc: Scenario) -> tuple[int, ...]:
        return self.plan.levels if sc.pipeline else self.plan.single_levels

    def _tag(self) -> str:
        self.serial += 1
        return f"b{self.serial:03d}{secrets.token_hex(3)}"

    def _sample(self, sc: Scenario) -> str:
        """One call from a Python client with a stamped body: proves the body is accepted."""
        body = stamp(sc.message(self._tag()), 0, self.plan.people)
        with grpc.insecure_channel(self.stack.target(sc.target)) as ch:
            call = ch.unary_unary(sc.path)
            raw = call(body, metadata=metadata_for(sc.principal), timeout=10)
        if sc.response_type is None:
            return f"{len(raw)} bytes"
        text = str(sc.response_type.FromString(raw)).replace("\n", " ").strip()
        return text[:200]

    def _slice(self, sc: Scenario, level: int, watch: LogWatch, seconds: int) -> _Slice:
        pids = self.stack.pids()
        for pid in pids.values():
            procs.reset_peak(pid)
        cpu_before = {n: procs.cpu_seconds(p) or 0.0 for n, p in pids.items()}
        # PostgreSQL runs on the same CPUs as the services: its share of a call is counted too
        # (all its processes; nothing else uses it meanwhile). The null and kit pipelines use
        # no database.
        database = self.database_url is not None and sc.target not in ("null", "kit")
        database_before = procs.cpu_by_name(procs.DATABASE_PROCESS) if database else {}
        mark = watch.mark()
        ticks_before = procs.machine_ticks()
        null_before = self._null_stats() if sc.target == "null" else {}
        stored_before = self._stored(sc)
        load = self._load(
            sc, sc.target, concurrency=level, duration=seconds, warmup=self.plan.warmup
        )
        profiled = {n: p for n, p in pids.items() if n in self._relevant(sc)}
        spies = []
        if self.profiler and sc.target not in ("null", "kit"):
            spies = self.profiler.start(f"{sc.key}-c{level}", profiled, load.duration + load.warmup)
        r = loadgen.run(load, self.work_dir / "runs" / f"{sc.key}-{level}-{self.serial}", self.shim)
        ticks_after = procs.machine_ticks()
        ticks = (ticks_after[0] - ticks_before[0], ticks_after[1] - ticks_before[1])
        if sc.target == "null":
            after = self._null_stats()
            codes = {
                "OK": after["ok"] - null_before["ok"],
                "UNAVAILABLE": after["failed"] - null_before["failed"],
            }
        else:
            logged_by = "kit-front" if sc.target == "kit" else sc.target
            codes = dict(watch.codes(mark, logged_by, sc.path))
        stored = None if stored_before is None else (self._stored(sc) or 0) - stored_before
        relevant = self._relevant(sc)
        profile = None
        if self.profiler and sc.target not in ("null", "kit"):
            profile = self.profiler.finish(
                f"{sc.key}-c{level}", profiled, spies, sum(codes.values())
            )
        cpu = {
            n: (procs.cpu_seconds(p) or 0.0) - cpu_before[n]
            for n, p in pids.items()
            if n in relevant
        }
        if database:
            cpu[procs.DATABASE_PROCESS] = procs.cpu_since(database_before, procs.DATABASE_PROCESS)
        rss = {n: procs.peak_rss_mb(p) or 0.0 for n, p in pids.items() if n in relevant}
        return _Slice(r, codes, stored, cpu, rss, profile, ticks)

    def _stored(self, sc: Scenario) -> int | None:
        if not sc.stored_in:
            return None
        return count_rows(self.stack.database_url(sc.target), sc.stored_in)

    @staticmethod
    def _relevant(sc: Scenario) -> tuple[str, ...]:
        if sc.target == "null":
            return NULL_NAMES
        if sc.target == "kit":
            return KIT_NAMES
        if sc.target == "delivery":
            return ("delivery", "consent", "billing")
        if sc.target == "ads":
            return ("ads", "consent", "billing")
        return (sc.target,)

    def _null_stats(self) -> dict[str, int]:
        with grpc.insecure_channel(self.stack.target("null")) as ch:
            raw = ch.unary_unary(STATS_PATH)(b"", timeout=10)
        stats: dict[str, int] = json.loads(raw)
        return stats

    # --- soak --------------------------------------------------------------------------

    def _soak(self, send: ScenarioResult, watch: LogWatch) -> Soak:
        peak = send.peak()
        assert peak is not None
        sc = next(s for s in SCENARIOS if s.key == "send")
        rate = 0.8 * peak.rps
        seconds = int(self.plan.soak_minutes * 60)
        pids = {n: p for n, p in self.stack.pids().items() if n in self.stack.services}
        samples: list[dict[str, float]] = []
        stop = threading.Event()

        def sample() -> None:
            t0 = time.monotonic()
            while not stop.is_set():
                row = {"t": round(time.monotonic() - t0, 1)}
                row.update({n: procs.rss_mb(p) or 0.0 for n, p in pids.items()})
                samples.append(row)
                stop.wait(5.0)

        mark = watch.mark()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            r = loadgen.run(
                self._load(
                    sc, "delivery", concurrency=peak.concurrency, duration=seconds, rate=rate
                ),
                self.work_dir / "runs" / "soak",
                self.shim,
            )
        finally:
            stop.set()
            sampler.join()
        samples.append(
            {"t": float(seconds), **{n: procs.rss_mb(p) or 0.0 for n, p in pids.items()}}
        )
        # Start of the curve: after the first tenth, once caches and pools have filled.
        base = next((s for s in samples if s["t"] >= seconds / 10), samples[0])
        end = samples[-1]
        return Soak(
            minutes=self.plan.soak_minutes,
            target_rps=round(rate, 1),
            achieved_rps=r.rps,
            codes=dict(watch.codes(mark, "delivery", sc.path)),
            rss_start_mb={n: round(base[n], 1) for n in pids},
            rss_end_mb={n: round(end[n], 1) for n in pids},
            growth_pct={n: round(100 * (end[n] - base[n]) / base[n], 1) for n in pids if base[n]},
            samples=samples,
        )


@dataclass(frozen=True)
class _Slice:
    """One h2load run of a point, with what the services did meanwhile."""

    result: loadgen.Result
    codes: dict[str, int]  # gRPC outcomes of the run (warm-up included), from the service
    stored: int | None
    cpu_s: dict[str, float]
    peak_rss_mb: dict[str, float]
    profile: dict[str, Any] | None
    ticks: tuple[int, int]  # the machine's (stolen, all) CPU ticks during the run


def _point(level: int, slices: list[_Slice]) -> Point:
    """A point from its slices: throughput over all their measured time, percentiles of all
    their calls, outcomes, CPU and rows summed, the highest memory."""
    results = [s.result for s in slices]
    codes: dict[str, int] = {}
    for s in slices:
        for code, calls in s.codes.items():
            codes[code] = codes.get(code, 0) + calls
    total = sum(codes.values())
    # h2load resets the streams still in flight when its time is up; the service logs those
    # as CANCELLED. They are each run's edge, not failures: keep them out of the success
    # fraction (they stay visible in `codes`).
    cancelled = codes.get("CANCELLED", 0)
    answered = total - (cancelled if cancelled <= level * len(slices) else 0)
    latencies = sorted(ms for r in results for ms in r.latencies_ms)
    stored = [s.stored for s in slices]
    cpu: dict[str, float] = {}
    rss: dict[str, float] = {}
    for s in slices:
        for name, seconds in s.cpu_s.items():
            cpu[name] = cpu.get(name, 0.0) + seconds
        for name, mb in s.peak_rss_mb.items():
            rss[name] = max(rss.get(name, 0.0), mb)
    measured = sum(r.measured_seconds for r in results)
    return Point(
        concurrency=level,
        rps=round(sum(r.requests for r in results) / measured, 1) if measured else 0.0,
        p50_ms=loadgen.percentile(latencies, 50),
        p95_ms=loadgen.percentile(latencies, 95),
        p99_ms=loadgen.percentile(latencies, 99),
        requests=sum(r.requests for r in results),
        codes={k: v for k, v in codes.items() if v},
        ok_fraction=(codes.get("OK", 0) / answered) if answered else 0.0,
        stored=None if None in stored else sum(n or 0 for n in stored),
        loadgen_cpu_s=round(sum(r.cpu_seconds for r in results), 3),
        loadgen_wall_s=round(sum(r.wall_seconds for r in results), 3),
        service_cpu_s={n: round(c, 3) for n, c in cpu.items()},
        cpu_ms_per_call={n: round(1000 * c / total, 2) for n, c in cpu.items() if total},
        peak_rss_mb={n: round(mb, 1) for n, mb in rss.items()},
        profile=slices[-1].profile,
        slices=len(slices),
        stolen_pct=procs.stolen_pct(
            (0, 0), (sum(s.ticks[0] for s in slices), sum(s.ticks[1] for s in slices))
        ),
    )


def _h2load_version() -> str:
    import subprocess

    out = subprocess.run(
        [loadgen.h2load_path(), "--version"], capture_output=True, text=True, check=False
    )
    return out.stdout.strip() or "h2load"
