"""The load generator: h2load driving unary gRPC with a pre-encoded request body.

Every request is the same gRPC message (5-byte frame prefix + protobuf) except for the fields
the LD_PRELOAD shim stamps (see shim.py). h2load only sees HTTP statuses, never grpc-status;
the caller checks correctness separately (service logs, sample calls). Latency percentiles
come from h2load's per-request log; CPU time from the rusage of the h2load process.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

H2LOAD_INSTALL = "apt-get update && apt-get install -y nghttp2-client"


class LoadGeneratorMissing(RuntimeError):
    pass


def h2load_path() -> str:
    path = shutil.which("h2load")
    if path is None:
        raise LoadGeneratorMissing(
            "h2load is not installed (Debian package nghttp2-client): " + H2LOAD_INSTALL
        )
    return path


def grpc_frame(message: bytes) -> bytes:
    """A length-prefixed gRPC message: no compression flag, 4-byte big-endian length."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@dataclass(frozen=True)
class Load:
    target: str  # host:port
    path: str  # /package.Service/Method
    message: bytes  # serialized request, markers included
    token: str
    concurrency: int
    duration: float
    warmup: float = 0.0
    rate: float | None = None  # total requests per second; None: as fast as answered
    pick: int = 0  # modulus of PICK_MARKER (e.g. the number of people)


@dataclass(frozen=True)
class Result:
    concurrency: int
    requests: int  # completed in the measured period
    http_ok: int
    failed: int
    seconds: float  # h2load's whole run, warm-up included
    rps: float  # completed per second of the measured period
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_seconds: float  # user + system time of h2load over the whole run (warm-up included)
    wall_seconds: float
    latencies_ms: tuple[float, ...] = ()  # of the calls answered 200 in the measured period

    @property
    def measured_seconds(self) -> float:
        return self.requests / self.rps if self.rps else 0.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def split(concurrency: int) -> tuple[int, int]:
    """Connections and streams per connection: up to 4 connections, like a few client channels."""
    clients = min(concurrency, 4)
    return clients, max(1, concurrency // clients)


def command(load: Load, body_file: Path, log_file: Path) -> list[str]:
    clients, streams = split(load.concurrency)
    argv = [
        h2load_path(),
        "-t1",
        f"-c{clients}",
        f"-m{streams}",
        f"-D{max(1, round(load.duration))}",
        "-d",
        str(body_file),
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "-H",
        f"authorization: Bearer {load.token}",
        "--log-file",
        str(log_file),
    ]
    if load.warmup > 0:
        argv.append(f"--warm-up-time={max(1, round(load.warmup))}")
    if load.rate:
        argv.append(f"--rps={max(0.1, load.rate / clients):.3f}")
    argv.append(f"http://{load.target}{load.path}")
    return argv


_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored"
)
_CODES = re.compile(r"status codes: (\d+) 2xx")


def parse(output: str, log_rows: list[tuple[int, int, int]], concurrency: int) -> Result:
    """h2load's summary and per-request log (start us, HTTP status, duration us)."""
    finished = _FINISHED.search(output)
    requests = _REQUESTS.search(output)
    codes = _CODES.search(output)
    if not (finished and requests and codes):
        raise RuntimeError("unexpected h2load output:\n" + output[-2000:])
    seconds = float(finished.group(1)) / (1000 if finished.group(2) == "ms" else 1)
    latencies = sorted(d / 1000 for _, status, d in log_rows if status == 200)
    return Result(
        concurrency=concurrency,
        requests=int(requests.group(3)),
        http_ok=int(codes.group(1)),
        failed=int(requests.group(5)) + int(requests.group(6)),
        seconds=seconds,
        rps=float(finished.group(3)),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
        p99_ms=percentile(latencies, 99),
        cpu_seconds=0.0,
        wall_seconds=0.0,
        latencies_ms=tuple(latencies),
    )


def read_log(log_file: Path, measured_from_us: int | None) -> list[tuple[int, int, int]]:
    rows = []
    for line in log_file.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        start, status, duration = int(parts[0]), int(parts[1]), int(parts[2])
        if measured_from_us is None or start >= measured_from_us:
            rows.append((start, status, duration))
    return rows


def run(load: Load, work_dir: Path, shim: Path | None) -> Result:
    """Runs h2load once; blocks for warm-up + duration."""
    work_dir.mkdir(parents=True, exist_ok=True)
    body_file = work_dir / "body.bin"
    body_file.write_bytes(grpc_frame(load.message))
    log_file = work_dir / "requests.tsv"
    env = dict(os.environ)
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
        env["BIZMSG_BENCH_PICK"] = str(load.pick)
    argv = command(load, body_file, log_file)
    started = time.time()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.time() - started
    if proc.returncode != 0:
        raise RuntimeError(f"h2load exited with {proc.returncode}:\n{output[-2000:]}")
    # The log holds warm-up requests too; keep only those started after it.
    measured_from = int((started + load.warmup) * 1e6) if load.warmup > 0 else None
    result = parse(output, read_log(log_file, measured_from), load.concurrency)
    return Result(
        **{
            **result.__dict__,
            "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "wall_seconds": wall,
        }
    )
