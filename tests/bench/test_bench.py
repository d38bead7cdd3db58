"""`bizmsg bench` plumbing on tiny runs: the null pipeline, fresh ids per call, the figures.

No timed assertions: the figures only have to be well formed and every call has to succeed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest

from bizmsg.bench import loadgen, report, shim
from bizmsg.bench import main as bench_main
from bizmsg.bench.runner import Plan, Runner
from bizmsg.bench.scenarios import PERSON, SCENARIOS, request_id, stamp
from bizmsg.delivery.v1 import delivery_pb2

needs_h2load = pytest.mark.skipif(
    shutil.which("h2load") is None, reason="h2load missing: apt-get install -y nghttp2-client"
)

H2LOAD_OUTPUT = """
finished in 3.00s, 1088.00 req/s, 40.38KB/s
requests: 3264 total, 3264 started, 3264 done, 3264 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 3264 2xx, 0 3xx, 0 4xx, 0 5xx
"""


@pytest.mark.parametrize("url", ["sqlite+aiosqlite:///x.db", "not a url"])
def test_a_database_url_that_is_not_postgresql_is_refused(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["--quick", "--database-url", url], ["--scale", "--database-url", url]):
        assert bench_main(argv) == 2
        assert "--database-url" in capsys.readouterr().err


def test_grpc_frame_prefixes_the_length() -> None:
    assert loadgen.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


def test_parse_reads_the_summary_and_percentiles() -> None:
    rows = [(0, 200, d * 1000) for d in range(1, 101)] + [(0, -1, 5)]
    r = loadgen.parse(H2LOAD_OUTPUT, rows, 8)
    assert (r.requests, r.http_ok, r.failed, r.rps) == (3264, 3264, 0, 1088.0)
    assert (r.p50_ms, r.p95_ms, r.p99_ms) == (50.0, 95.0, 99.0)


def test_parse_refuses_unexpected_output() -> None:
    with pytest.raises(RuntimeError, match="unexpected h2load output"):
        loadgen.parse("connect failed", [], 1)


def test_stamp_matches_the_shim_and_keeps_the_size() -> None:
    msg = delivery_pb2.SendMessageRequest(
        request_id=request_id("t"), recipient=f"user:{PERSON}"
    ).SerializeToString()
    out = delivery_pb2.SendMessageRequest.FromString(stamp(msg, 1234, 1000))
    assert out.request_id == "t-000000001234"
    assert out.recipient == "user:p000234"
    assert len(stamp(msg, 1234, 1000)) == len(msg)


@needs_h2load
def test_shim_gives_every_request_a_fresh_id(tmp_path: Path) -> None:
    lib = shim.build(tmp_path)
    if lib is None:
        pytest.skip("no C compiler")
    seen: list[bytes] = []

    async def run() -> None:
        async def record(request: bytes, context: Any) -> bytes:
            seen.append(request)
            return b""

        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "t.T", {"M": grpc.unary_unary_rpc_method_handler(record)}
                )
            ]
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        body = tmp_path / "body.bin"
        body.write_bytes(loadgen.grpc_frame(b"id=@@@@@@@@@@@@ to=p######"))
        proc = await asyncio.create_subprocess_exec(
            loadgen.h2load_path(), "-n200", "-c2", "-m8", "-d", str(body),
            "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}/t.T/M",
            env={"LD_PRELOAD": str(lib), "BIZMSG_BENCH_PICK": "7"},
            stdout=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert await proc.wait() == 0
        await server.stop(None)

    asyncio.run(run())
    assert len(seen) == 200
    assert len(set(seen)) == 200  # no two calls share a request id
    assert {s[-6:] for s in seen} == {f"{i:06d}".encode() for i in range(7)}


@needs_h2load
@pytest.mark.integration
def test_quick_null_pipeline_writes_json_and_chart(tmp_path: Path) -> None:
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    code = bench_main(["--quick", "--only", "null", "--json", str(out), "--chart", str(png)])
    assert code == 0
    fig = json.loads(out.read_text())
    assert fig["null_rps"] > 0
    assert fig["send_rps"] is None and fig["ratio"] is None
    null = fig["scenarios"]["null"]
    assert [p["concurrency"] for p in null["points"]] == [4, 16, 64]
    for p in null["points"]:
        assert p["ok_fraction"] == 1.0 and p["codes"]["OK"] > 0
        assert 0 < p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"]
        assert set(p["peak_rss_mb"]) == {"null-front", "null-consent", "null-billing"}
    assert fig["loadgen"]["cpu_seconds"] > 0 and fig["loadgen"]["unique_request_ids"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_h2load
@pytest.mark.integration
def test_levels_and_duration_replace_the_plans_sweep(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--only", "null", "--levels", "8", "--duration", "1", "--json", str(out)]
    code = bench_main(argv)
    assert code == 0
    fig = json.loads(out.read_text())
    assert [p["concurrency"] for p in fig["scenarios"]["null"]["points"]] == [8]
    assert fig["plan"]["duration"] == 1
    bad_options = (["--levels", "0"], ["--levels", "x"], ["--levels", ","], ["--duration", "-1"])
    for bad in (*bad_options, ["--slices", "-1"]):
        assert bench_main(["--quick", "--only", "null", *bad]) == 2


@needs_h2load
@pytest.mark.integration
def test_slices_make_one_point_of_several_runs(tmp_path: Path) -> None:
    """A point measured in slices is one point: the calls, CPU and rows of every slice added
    up, throughput over their measured time, percentiles of all their calls. The slices go in
    rounds over the levels, so that every level's point spans the whole sweep."""
    out = tmp_path / "bench.json"
    argv = ["--quick", "--only", "null,kit", "--levels", "4,8", "--duration", "2", "--slices", "2"]
    assert bench_main([*argv, "--json", str(out), "--work-dir", str(tmp_path / "w")]) == 0
    fig = json.loads(out.read_text())
    assert fig["plan"]["slices"] == 2
    for key in ("null", "kit"):
        points = fig["scenarios"][key]["points"]
        assert [p["concurrency"] for p in points] == [4, 8]
        for point in points:
            assert point["slices"] == 2
            assert point["ok_fraction"] == 1.0 and point["codes"]["OK"] >= point["requests"] > 0
            assert 0 < point["p50_ms"] <= point["p95_ms"] <= point["p99_ms"]
            assert point["rps"] > 0 and all(c > 0 for c in point["service_cpu_s"].values())
            assert 0 <= point["stolen_pct"] <= 100
    assert 0 <= fig["machine"]["stolen_pct"] <= 100
    # Two rounds; in each, every level once, and at each level the pipelines in turn.
    runs = sorted((tmp_path / "w" / "runs").iterdir(), key=lambda d: int(d.name.rsplit("-", 1)[1]))
    assert [d.name.rsplit("-", 1)[0] for d in runs] == ["null-4", "kit-4", "null-8", "kit-8"] * 2


def test_stolen_share_of_the_machine_s_cpu_time() -> None:
    """The hypervisor's share comes from /proc/stat's steal column, over all the ticks."""
    from bizmsg.bench import procs

    stolen, total = procs.machine_ticks()
    assert 0 <= stolen <= total and total > 0
    assert procs.stolen_pct((10, 1000), (30, 2000)) == 2.0
    assert procs.stolen_pct((10, 1000), (10, 1000)) == 0.0  # no time passed


@needs_h2load
@pytest.mark.integration
def test_every_scenario_on_the_real_services(tmp_path: Path) -> None:
    """The smallest full run: seeded services, one point per scenario, every call succeeds."""
    plan = Plan(
        levels=(4,), single_levels=(4,), duration=1, warmup=0, people=10, businesses=1, campaigns=2
    )
    outcome = Runner(plan, tmp_path, None).run(lambda text, done: None)
    fig = report.figures(outcome, quick=True)
    json.dumps(fig)  # serialisable as written by --json
    assert set(fig["scenarios"]) == {s.key for s in SCENARIOS}
    for key, s in fig["scenarios"].items():
        assert s["error"] == "", key
        assert s["sample"], key
        (point,) = s["points"]
        assert point["codes"].get("OK", 0) > 0, (key, point["codes"])
        assert point["ok_fraction"] == 1.0, (key, point["codes"])
    assert fig["ratio"] is not None and fig["ratio"] > 0
    cpu = fig["cpu_per_call_by_concurrency"]["4"]  # what bounds the ratio where CPU is the limit
    assert cpu["null_ms"] > 0 and cpu["send_ms"] > 0
    assert abs(cpu["ratio"] - cpu["null_ms"] / cpu["send_ms"]) < 0.05  # the ms are rounded
    # The kit pipeline: the same hops through the framework, with empty handlers.
    assert fig["kit_rps"] > 0 and fig["kit_ratio"] > 0
    assert fig["kit_cpu_ms_by_concurrency"]["4"] > 0
    # Each pipeline's busiest process at its peak, one of its own, with a share of the CPUs
    # no larger than all its processes' together.
    own = {"null": "null-", "kit": "kit-", "send": ""}
    assert set(fig["busiest_at_peak"]) == set(own)
    for key, b in fig["busiest_at_peak"].items():
        points = fig["scenarios"][key]["points"]
        assert b["process"] in points[0]["service_cpu_s"] and b["process"].startswith(own[key])
        assert 0 < b["cpus"] <= b["all_processes_cpus"]
    assert fig["busiest_at_peak"]["send"]["process"] in {"consent", "billing", "delivery"}
    assert set(fig["scenarios"]["kit"]["points"][0]["peak_rss_mb"]) == {
        "kit-front",
        "kit-consent",
        "kit-billing",
    }
    assert set(fig["rss_mb"]) >= {"consent", "billing", "delivery", "ads"}
    assert fig["errors_logged"] == []
    text = report.table(outcome, fig)
    assert "null pipeline peak" in text and "kit pipeline" in text
    assert "CPU per call in all services" in text and "busiest process at each peak" in text


def test_cpu_by_name_counts_every_process_of_that_command() -> None:
    """The database server's CPU is the sum over its processes (procs.cpu_by_name); here,
    the processes of this test's own command, this one among them."""
    import os

    from bizmsg.bench import procs

    name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    before = procs.cpu_by_name(name)
    assert os.getpid() in before
    sum(i * i for i in range(300_000))  # some CPU of this process's own
    assert procs.cpu_since(before, name) > 0
    assert procs.cpu_since({}, name) >= sum(before.values())  # a process not seen counts whole


@needs_h2load
def test_on_postgresql_the_database_server_s_cpu_is_counted_per_call(tmp_path: Path) -> None:
    """On PostgreSQL the bench counts the server's processes' CPU in SendMessage's CPU per
    call (they share the machine's CPUs), not in the null pipeline's (it has no database),
    and never names the server as the busiest process (it is many)."""
    from tests.conftest import PG_ADMIN_URL, _require_postgres

    _require_postgres()
    plan = Plan(
        levels=(4,), single_levels=(4,), duration=1, warmup=0, people=10, businesses=1,
        campaigns=2, scenarios=("null", "send"),
    )  # fmt: skip
    outcome = Runner(plan, tmp_path, PG_ADMIN_URL).run(lambda text, done: None)
    fig = report.figures(outcome, quick=True)
    (send,) = fig["scenarios"]["send"]["points"]
    (null,) = fig["scenarios"]["null"]["points"]
    assert send["ok_fraction"] == 1.0
    assert send["cpu_ms_per_call"]["postgres"] > 0
    assert "postgres" not in null["cpu_ms_per_call"]
    assert fig["busiest_at_peak"]["send"]["process"] in {"consent", "billing", "delivery"}
    assert ", postgres " in report.table(outcome, fig)
