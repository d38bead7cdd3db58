"""`bizmsg bench`: SendMessage end to end against a null pipeline of the same shape (and a kit
pipeline: the same hops through bizmsg's framework with empty handlers), plus CheckConsent,
AuthorizeCharge and ServeAd alone, under h2load, with a fixed concurrency sweep.
`bizmsg bench --scale` instead runs the per-service scale benchmarks (1,000,000 consents,
1,000,000 transfers, 99,000 people messaged in a day, 10,000 campaigns) and prints their
figures in one table."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from bizmsg.bench.loadgen import LoadGeneratorMissing, h2load_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bizmsg bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short sweep that ends within a minute")
    p.add_argument(
        "--database-url",
        help="a PostgreSQL server (e.g. postgresql://postgres@127.0.0.1:5432/postgres); the bench "
        "creates one database per service there and drops them after. Default: SQLite files.",
    )
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--chart", type=Path, help="write throughput and p99 vs concurrency (PNG)")
    p.add_argument(
        "--soak",
        type=float,
        default=0.0,
        metavar="MINUTES",
        help="afterwards, send at 80%% of the measured SendMessage peak and report RSS growth",
    )
    p.add_argument(
        "--only",
        default="",
        help="comma-separated scenarios (null,kit,send,check,authorize,serve); default: all",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="also profile the services (py-spy, SQL statements per call) into DIR; "
        "slows them down, so its figures are not the benchmark's",
    )
    p.add_argument(
        "--levels",
        default="",
        help="comma-separated concurrency levels of the pipelines (e.g. 64), instead of the "
        "plan's sweep: a longer look at one point, to compare two trees",
    )
    p.add_argument(
        "--duration", type=int, default=0, help="measured seconds per point (default: the plan's)"
    )
    p.add_argument(
        "--slices",
        type=int,
        default=0,
        help="measure each pipeline point in this many slices, taken in rounds over the levels "
        "with the pipelines in turn at each (default: the plan's; 1 = one unbroken run each)",
    )
    p.add_argument("--work-dir", type=Path, help="keep databases, logs and h2load logs here")
    p.add_argument(
        "--scale",
        action="store_true",
        help="instead: the per-service scale benchmarks (consent, billing, delivery, ads) at "
        "the issues' sizes, in one table; takes --database-url, --json and --scale-size only",
    )
    p.add_argument(
        "--scale-size",
        choices=("full", "small"),
        default="full",
        help="with --scale: full (the issues' sizes, a few minutes) or small (a check in seconds)",
    )
    return p


# Options of the h2load benchmark that mean nothing to --scale.
_NOT_SCALE = (
    "quick", "only", "chart", "soak", "profile", "work_dir", "levels", "duration", "slices",
)  # fmt: skip


def main(argv: list[str]) -> int:
    ns = _parser().parse_args(argv)
    if ns.database_url:
        from bizmsg.kit.storage import postgres_url

        try:
            postgres_url(ns.database_url)
        except ValueError as e:
            print(f"bizmsg bench: --database-url: {e}", file=sys.stderr)
            return 2
    if ns.scale:
        given = [f"--{k.replace('_', '-')}" for k in _NOT_SCALE if getattr(ns, k)]
        if given:
            print(f"bizmsg bench --scale: {', '.join(given)}: not used by --scale", file=sys.stderr)
            return 2
        from bizmsg.bench import scale

        return scale.main(ns.scale_size, ns.database_url, ns.json)
    try:
        h2load_path()
    except LoadGeneratorMissing as e:
        print(f"bizmsg bench: {e}", file=sys.stderr)
        return 2
    # Imported here so `bizmsg --help` stays fast.
    from tqdm import tqdm

    from bizmsg.bench import report
    from bizmsg.bench.runner import FULL, QUICK, BenchError, Runner
    from bizmsg.bench.scenarios import BY_KEY

    plan = QUICK if ns.quick else FULL
    if ns.only:
        keys = tuple(k.strip() for k in ns.only.split(",") if k.strip())
        unknown = [k for k in keys if k not in BY_KEY]
        if unknown:
            print(f"bizmsg bench: unknown scenarios {unknown}; pick from {list(BY_KEY)}")
            return 2
        plan = replace(plan, scenarios=keys)
    plan = replace(plan, soak_minutes=ns.soak)
    if ns.levels:
        try:
            levels = tuple(int(c) for c in ns.levels.split(",") if c.strip())
        except ValueError:
            levels = ()
        if not levels or min(levels) < 1:
            print(f"bizmsg bench: --levels wants positive integers, got {ns.levels!r}")
            return 2
        plan = replace(plan, levels=levels)
    if ns.duration < 0:
        print("bizmsg bench: --duration must be positive")
        return 2
    if ns.duration:
        plan = replace(plan, duration=ns.duration)
    if ns.slices < 0:
        print("bizmsg bench: --slices must be positive")
        return 2
    if ns.slices:
        plan = replace(plan, slices=ns.slices)
    work_dir = ns.work_dir or Path(tempfile.mkdtemp(prefix="bizmsg-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    runner = Runner(plan, work_dir, ns.database_url, ns.profile)
    if runner.shim is None:
        print(
            "bizmsg bench: no C compiler, so every h2load call repeats one request_id: "
            "mutating scenarios then measure idempotent replays",
            file=sys.stderr,
        )
    bar = tqdm(total=plan.runs(), unit="run", dynamic_ncols=True, file=sys.stderr)

    def progress(text: str, done: int) -> None:
        bar.set_description_str(text)
        bar.update(done)

    try:
        outcome = runner.run(progress)
    except BenchError as e:
        print(f"bizmsg bench: {e}", file=sys.stderr)
        return 1
    finally:
        bar.close()
    fig = report.figures(outcome, ns.quick)
    print(report.table(outcome, fig))
    if ns.json:
        ns.json.write_text(json.dumps(fig, indent=2))
    if ns.chart:
        report.chart(outcome, ns.chart)
    if ns.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    else:
        print(f"work dir kept: {work_dir}")
    return 0
