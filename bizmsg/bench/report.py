"""The bench's figures: a dict for --json, a text table, and the chart for --chart."""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bizmsg.bench.procs import DATABASE_PROCESS
from bizmsg.bench.runner import Outcome, Point, ScenarioResult

RSS_LIMIT_MB = 150.0
SOAK_GROWTH_LIMIT_PCT = 10.0
TARGET_RATIO = 0.8


def _num(x: float) -> float | None:
    return None if math.isnan(x) else round(x, 3)


def _scenario(res: ScenarioResult) -> dict[str, Any]:
    peak = res.peak()
    rss: dict[str, float] = {}
    for p in res.points:
        for name, mb in p.peak_rss_mb.items():
            rss[name] = max(rss.get(name, 0.0), mb)
    return {
        "title": res.title,
        "sample": res.sample,
        "error": res.error,
        "peak_rps": peak.rps if peak else None,
        "concurrency": peak.concurrency if peak else None,
        "p50_ms": _num(peak.p50_ms) if peak else None,
        "p95_ms": _num(peak.p95_ms) if peak else None,
        "p99_ms": _num(peak.p99_ms) if peak else None,
        "ok_fraction": min((p.ok_fraction for p in res.points), default=None),
        "rss_mb": rss,
        "points": [
            {
                **p.__dict__,
                "p50_ms": _num(p.p50_ms),
                "p95_ms": _num(p.p95_ms),
                "p99_ms": _num(p.p99_ms),
            }
            for p in res.points
        ],
    }


def figures(out: Outcome, quick: bool) -> dict[str, Any]:
    scen = {k: _scenario(r) for k, r in out.scenarios.items()}
    null_rps = scen.get("null", {}).get("peak_rps")
    send_rps = scen.get("send", {}).get("peak_rps")
    kit_rps = scen.get("kit", {}).get("peak_rps")
    by_level = _by_level(out, "send", lambda p, n: round(p.rps / n.rps, 3) if n.rps else None)
    kit_by_level = _by_level(out, "kit", lambda p, n: round(p.rps / n.rps, 3) if n.rps else None)
    # All processes share the machine's CPUs: where they are the limit, the throughput ratio
    # follows the ratio of CPU spent per call.
    cpu_by_level = _by_level(out, "send", _cpu_ratio)
    kit = out.scenarios.get("kit")
    kit_cpu = {
        str(p.concurrency): round(sum(p.cpu_ms_per_call.values()), 2)
        for p in (kit.points if kit else [])
        if p.cpu_ms_per_call
    }
    rss: dict[str, float] = {}
    for s in scen.values():
        for name, mb in s["rss_mb"].items():
            rss[name] = max(rss.get(name, 0.0), mb)
    points = [p for r in out.scenarios.values() for p in r.points]
    cpu = sum(p.loadgen_cpu_s for p in points)
    wall = sum(p.loadgen_wall_s for p in points)
    calls = sum(sum(p.codes.values()) for p in points)
    return {
        "null_rps": null_rps,
        "send_rps": send_rps,
        "ratio": round(send_rps / null_rps, 3) if null_rps and send_rps else None,
        "ratio_target": TARGET_RATIO,
        "ratio_by_concurrency": by_level,
        "cpu_per_call_by_concurrency": cpu_by_level,
        "kit_rps": kit_rps,
        "kit_ratio": round(kit_rps / null_rps, 3) if null_rps and kit_rps else None,
        "kit_ratio_by_concurrency": kit_by_level,
        "kit_cpu_ms_by_concurrency": kit_cpu,
        "busiest_at_peak": {
            k: b for k in ("null", "kit", "send") if (b := _busiest(out.scenarios.get(k)))
        },
        "scenarios": scen,
        "rss_mb": rss,
        "rss_limit_mb": RSS_LIMIT_MB,
        "rss_ok": all(mb < RSS_LIMIT_MB for mb in rss.values()),
        "soak": None
        if out.soak is None
        else {
            **out.soak.__dict__,
            "growth_limit_pct": SOAK_GROWTH_LIMIT_PCT,
            "growth_ok": all(g < SOAK_GROWTH_LIMIT_PCT for g in out.soak.growth_pct.values()),
        },
        "loadgen": {
            "tool": out.loadgen_version,
            "unique_request_ids": out.unique_ids,
            "cpu_seconds": round(cpu, 3),
            "wall_seconds": round(wall, 3),
            "max_core_share": round(
                max(
                    (p.loadgen_cpu_s / p.loadgen_wall_s for p in points if p.loadgen_wall_s),
                    default=0,
                ),
                3,
            ),
            "cpu_us_per_call": round(1e6 * cpu / calls, 1) if calls else None,
        },
        "machine": {
            "cpus": _cpus(),
            "load_before": [round(x, 2) for x in out.load_before],
            "load_after": [round(x, 2) for x in out.load_after],
            "stolen_pct": out.stolen_pct,
            "python": platform.python_version(),
            "grpcio": version("grpcio"),
            "kernel": platform.release(),
        },
        "database": out.database,
        "quick": quick,
        "plan": out.plan.__dict__,
        "seeded": None if out.seeded is None else out.seeded.__dict__,
        "errors_logged": out.errors_logged[:20],
        "stop_problems": out.stop_problems,
        "seconds": round(out.seconds, 1),
        "shutdown_seconds": round(out.stop_seconds, 1),
    }


def _by_level(out: Outcome, key: str, measure: Callable[[Point, Point], Any]) -> dict[str, Any]:
    """`measure(point, null point)` at each concurrency both scenarios were measured at."""
    if key not in out.scenarios or "null" not in out.scenarios:
        return {}
    null_points = {p.concurrency: p for p in out.scenarios["null"].points}
    found = {
        str(p.concurrency): measure(p, null_points[p.concurrency])
        for p in out.scenarios[key].points
        if p.concurrency in null_points
    }
    return {level: m for level, m in found.items() if m is not None}


def _cpu_ratio(send: Point, null: Point) -> dict[str, float] | None:
    null_cpu, send_cpu = (sum(q.cpu_ms_per_call.values()) for q in (null, send))
    if not (null_cpu and send_cpu):
        return None
    return {
        "null_ms": round(null_cpu, 2),
        "send_ms": round(send_cpu, 2),
        "ratio": round(null_cpu / send_cpu, 3),
    }


def _busiest(res: ScenarioResult | None) -> dict[str, Any] | None:
    """At a pipeline's peak, the process that used the most CPU and the CPUs all its processes
    used. Each process runs one event loop: one near a whole CPU is the pipeline's limit
    however many CPUs are idle; otherwise the machine's CPUs are."""
    peak = res.peak() if res else None
    if peak is None or not peak.loadgen_wall_s or not peak.service_cpu_s:
        return None
    used = {n: c / peak.loadgen_wall_s for n, c in peak.service_cpu_s.items()}
    # The database server is many processes: counted in all, never the busiest one.
    name = max((n for n in used if n != DATABASE_PROCESS), key=lambda n: used[n])
    return {
        "concurrency": peak.concurrency,
        "process": name,
        "cpus": round(used[name], 2),
        "all_processes_cpus": round(sum(used.values()), 2),
    }


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _cell(x: float | None, fmt: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table(out: Outcome, fig: dict[str, Any]) -> str:
    head = (
        f"{'scenario':<10}{'conc':>5}{'calls/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}"
        f"{'ok %':>7}{'gen cpu':>8}{'stolen':>8}  service CPU ms per call / peak RSS MB"
    )
    lines = [head, "-" * len(head)]
    for res in out.scenarios.values():
        if res.error:
            lines.append(f"{res.key:<10} not measured: {res.error}")
        for p in res.points:
            lines.append(_row(res.key, p))
            if p.profile:
                lines.extend(_profile_lines(p.profile))
    lines.append("")
    ratio = fig["ratio"]
    lines.append(
        f"null pipeline peak {_cell(fig['null_rps'], '.0f')}/s, SendMessage peak "
        f"{_cell(fig['send_rps'], '.0f')}/s, ratio {_cell(ratio, '.2f')} "
        f"(target >= {TARGET_RATIO})"
    )
    if fig["ratio_by_concurrency"]:
        lines.append(
            "ratio at equal concurrency: "
            + ", ".join(f"c={c}: {r:.2f}" for c, r in fig["ratio_by_concurrency"].items())
        )
    if fig["cpu_per_call_by_concurrency"]:
        lines.append(
            "CPU per call in all services (and PostgreSQL's processes, when it is the "
            "database), null / SendMessage (their ratio bounds the throughput ratio when CPU "
            "is the limit): "
            + ", ".join(
                f"c={c}: {v['null_ms']:.1f} / {v['send_ms']:.1f} ms = {v['ratio']:.2f}"
                for c, v in fig["cpu_per_call_by_concurrency"].items()
            )
        )
    if fig["kit_rps"]:
        kit = "kit pipeline (the framework and its streams, empty handlers) peak "
        kit += f"{fig['kit_rps']:.0f}/s"
        if fig["kit_ratio"]:
            by_level = fig["kit_ratio_by_concurrency"].items()
            levels = ", ".join(f"c={c}: {r:.2f}" for c, r in by_level)
            kit += f", {fig['kit_ratio']:.2f} of the null pipeline ({levels})"
        if fig["kit_cpu_ms_by_concurrency"]:
            kit += "; CPU per call in all its services " + ", ".join(
                f"c={c}: {ms:.1f} ms" for c, ms in fig["kit_cpu_ms_by_concurrency"].items()
            )
        lines.append(kit)
    if fig["busiest_at_peak"]:
        lines.append(
            "busiest process at each peak (one event loop each: near 1.00 CPU it is the limit), "
            "and the CPUs of all the pipeline's processes: "
            + ", ".join(
                f"{k} c={b['concurrency']}: {b['process']} {b['cpus']:.2f}, "
                f"all {b['all_processes_cpus']:.2f} of {fig['machine']['cpus']}"
                for k, b in fig["busiest_at_peak"].items()
            )
        )
    rss = ", ".join(f"{n} {mb:.0f}" for n, mb in fig["rss_mb"].items())
    lines.append(f"peak RSS MB (limit {RSS_LIMIT_MB:.0f}): {rss}")
    gen = fig["loadgen"]
    lines.append(
        f"load generator: {gen['tool']}, {gen['cpu_seconds']:.1f} s CPU over "
        f"{gen['wall_seconds']:.0f} s (at most {100 * gen['max_core_share']:.0f} % of one core, "
        f"{_cell(gen['cpu_us_per_call'], '.0f')} us per call); "
        + ("fresh request_id per call" if gen["unique_request_ids"] else "REPEATED request ids")
    )
    m = fig["machine"]
    lines.append(
        f"machine: {m['cpus']} CPUs, load average {m['load_before'][0]:.2f} before / "
        f"{m['load_after'][0]:.2f} after, {m['stolen_pct']:.1f} % of the CPUs' time taken by the "
        f"hypervisor; database {fig['database']}; {fig['seconds']:.0f} s"
    )
    if fig["soak"]:
        s = fig["soak"]
        growth = ", ".join(f"{n} {g:+.1f} %" for n, g in s["growth_pct"].items())
        lines.append(
            f"soak {s['minutes']} min at {s['target_rps']:.0f}/s (got {s['achieved_rps']:.0f}/s): "
            f"RSS growth {growth} (limit {SOAK_GROWTH_LIMIT_PCT:.0f} %), codes {s['codes']}"
        )
    for problem in out.stop_problems:
        lines.append("shutdown: " + problem)
    if fig["errors_logged"]:
        lines.append(f"{len(out.errors_logged)} ERROR lines in service logs, first: ")
        lines.append("  " + fig["errors_logged"][0])
    return "\n".join(lines)


def _row(key: str, p: Point) -> str:
    share = p.loadgen_cpu_s / p.loadgen_wall_s if p.loadgen_wall_s else 0.0
    svc = ", ".join(
        f"{n} {p.cpu_ms_per_call.get(n, 0):.1f}/{p.peak_rss_mb.get(n, 0):.0f}"
        for n in p.peak_rss_mb
    )
    if DATABASE_PROCESS in p.cpu_ms_per_call:
        svc += f", {DATABASE_PROCESS} {p.cpu_ms_per_call[DATABASE_PROCESS]:.1f}"
    bad = {k: v for k, v in p.codes.items() if k != "OK"}
    note = f"  {bad}" if bad else ""
    if p.stored is not None:
        # Calls h2load abandons when a run ends are cancelled part-way (and logged as OK).
        note += f"  stored {p.stored} of {p.codes.get('OK', 0)} logged OK"
    return (
        f"{key:<10}{p.concurrency:>5}{p.rps:>9.0f}{_cell(p.p50_ms, '.1f'):>8}"
        f"{_cell(p.p95_ms, '.1f'):>8}{_cell(p.p99_ms, '.1f'):>8}{100 * p.ok_fraction:>7.1f}"
        f"{100 * share:>7.0f}%{p.stolen_pct:>7.1f}%  {svc}{note}"
    )


def _profile_lines(profile: dict[str, Any]) -> list[str]:
    out = []
    for svc, prof in profile.items():
        libs = ", ".join(f"{name} {share}%" for name, share in prof["cpu_top"]["libraries"][:4])
        code = "; ".join(f"{name} {share}%" for name, share in prof["cpu_top"]["code"][:4])
        out.append(f"    {svc}: {prof['sql_per_call']} SQL statements per call; CPU in {libs}")
        out.append(f"      by function: {code}")
    return out


def chart(out: Outcome, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rps, ax_p99) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label in (("null", "null pipeline"), ("kit", "kit pipeline"), ("send", "SendMessage")):
        res = out.scenarios.get(key)
        if res is None or not res.points:
            continue
        xs = [p.concurrency for p in res.points]
        ax_rps.plot(xs, [p.rps for p in res.points], marker="o", label=label)
        ax_p99.plot(xs, [p.p99_ms for p in res.points], marker="o", label=label)
    for ax, title, unit in (
        (ax_rps, "throughput", "calls per second"),
        (ax_p99, "p99 latency", "milliseconds"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent calls")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    load = out.load_before[0]
    fig.suptitle(f"bizmsg bench ({out.database}, {_cpus()} CPUs, load average {load:.1f} at start)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
