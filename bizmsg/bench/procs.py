"""Processes the bench starts itself (the null and kit pipelines) and memory readings of any
process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from bizmsg.kit.processes import REPO_ROOT, free_port, wait_serving


class BenchProcess:
    """A `python -m <module>` server on a free port, logging to a file."""

    def __init__(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.env = {**os.environ, **env} if env else None
        self.port = free_port()
        self.argv = [sys.executable, "-m", module, *args, "--port", str(self.port)]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> BenchProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv, cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def wait_serving(self, timeout: float = 30.0) -> BenchProcess:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log_path}")
        wait_serving(self.target, timeout=timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def _status_kb(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def rss_mb(pid: int) -> float | None:
    kb = _status_kb(pid, "VmRSS")
    return None if kb is None else kb / 1024


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the peak resident set since start (or since reset_peak)."""
    kb = _status_kb(pid, "VmHWM")
    return None if kb is None else kb / 1024


def reset_peak(pid: int) -> bool:
    """Resets VmHWM to the current RSS (Linux: write 5 to clear_refs), so a scenario's own peak
    can be read afterwards; False when the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return ticks / _CLK_TCK


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """The machine's CPU ticks so far, (stolen, all), from /proc/stat: stolen is time the
    hypervisor ran another guest while this one had work; (0, 0) where there is no
    /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0, 0
    # cpu user nice system idle iowait irq softirq steal (guest time is inside user)
    ticks = [int(x) for x in fields[1:9]]
    return ticks[7], sum(ticks)


def stolen_pct(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the CPUs' time the hypervisor took between two machine_ticks()."""
    total = after[1] - before[1]
    return round(100 * (after[0] - before[0]) / total, 1) if total > 0 else 0.0


# The command name of PostgreSQL's processes (the server's, not a client's).
DATABASE_PROCESS = "postgres"


def cpu_by_name(name: str) -> dict[int, float]:
    """CPU seconds so far of every process whose command is `name` (all of a database
    server's processes: its backends, WAL writer, checkpointer), by pid."""
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != name:
                continue
        except OSError:
            continue
        seconds = cpu_seconds(int(entry.name))
        if seconds is not None:
            out[int(entry.name)] = seconds
    return out


def cpu_since(before: dict[int, float], name: str) -> float:
    """CPU seconds `name`'s processes used since `before` (cpu_by_name): a process started
    since counts whole; one that ended since is not seen (a pooled connection lives on)."""
    return sum(s - before.get(pid, 0.0) for pid, s in cpu_by_name(name).items())
