"""`bizmsg bench --scale` in its smallest mode, as a user runs it: every bench answers and the
figures are well formed. Not timed: whether a ratio passes the 1.2x target is not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bizmsg.bench.scale import BENCHES, JUDGED, TARGET
from bizmsg.kit.processes import REPO_ROOT


@pytest.mark.integration
def test_small_scale_run_writes_every_bench_s_figures(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    command = ["bizmsg.cli", "bench", "--scale", "--scale-size", "small", "--json", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())

    assert report["scale_size"] == "small" and report["database"] == "sqlite"
    assert report["target"] == TARGET
    assert report["machine"]["cpus"] > 0 and report["machine"]["sqlite"]
    assert len(report["load_before"]) == 3 and len(report["load_after"]) == 3
    assert list(report["benches"]) == [b.key for b in BENCHES]
    for key, bench in report["benches"].items():
        assert "error" not in bench, (key, bench)
        small, large = bench["small"], bench["large"]
        assert 0 <= small["size"] < large["size"], key
        for side in (small, large):
            assert side["runs"] >= 1, key
            assert side["throughput_rps"] > 0, key
            assert 0 < side["p50_ms"] <= side["p99_ms"], key
        ratios = bench["ratios"]
        assert ratios["throughput"] == pytest.approx(
            small["throughput_rps"] / large["throughput_rps"], abs=1e-3
        )
        assert ratios["p50"] == pytest.approx(large["p50_ms"] / small["p50_ms"], abs=1e-3)
        assert ratios["p99"] == pytest.approx(large["p99_ms"] / small["p99_ms"], abs=1e-3)
        assert bench["pass"] == all(ratios[k] <= TARGET for k in JUDGED)
        assert bench["command"].startswith("python -m ") and bench["seconds"] > 0
        # The table names every bench with its two sizes.
        assert f"{large['size']:,} {bench['noun']}" in proc.stdout

    for key in ("consent", "ads"):  # the benches that measure CPU per call
        bench = report["benches"][key]
        for side in (bench["small"], bench["large"]):
            assert side["cpu_ms_per_call"] > 0
        assert bench["ratios"]["cpu"] == pytest.approx(
            bench["large"]["cpu_ms_per_call"] / bench["small"]["cpu_ms_per_call"], abs=1e-3
        )
    assert report["benches"]["billing"]["ratios"]["cpu"] is None
    assert "large vs small" in proc.stdout
