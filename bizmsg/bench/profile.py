"""`--profile DIR`: where the services spend their time, for the lead to act on.

Two views per measured point, written to DIR and summarised in the JSON:
- py-spy (`pip install py-spy`) samples each service while it holds the GIL (CPU, not waits);
  the summary is the share of samples per function of the project's own code and per library.
- SQL statements per call: the services start with a sitecustomize module (PYTHONPATH) that counts
  every statement SQLAlchemy sends and writes the counts when sent SIGUSR1. Service code is not
  touched. Profiling slows the services down: its figures are not the benchmark's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

SITECUSTOMIZE = r"""
import atexit, collections, json, os, re, signal, sys
_out = os.environ.get("BIZMSG_BENCH_SQLCOUNT")
if _out:
    _counts = collections.Counter()
    _dumps = [0]
    try:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def _add(statement):
            _counts[re.sub(r"\s+", " ", statement.strip())[:120]] += 1

        # SQLite: every statement its driver runs (bizmsg.kit.prepared skips SQLAlchemy);
        # PostgreSQL: what SQLAlchemy sends, and bizmsg.kit.prepared's statements.
        @event.listens_for(Engine, "before_cursor_execute")
        def _count(conn, cursor, statement, parameters, context, executemany):
            if conn.dialect.name != "sqlite":
                _add(statement)

        from bizmsg.kit import sqlite_inline
        from bizmsg.kit.testing import is_transaction_control

        # SQLite traces statements with their values: put the placeholders back.
        _literal = re.compile(r"[Xx]?'(?:[^']|'')*'|\b\d+(?:\.\d+)?\b|\bNULL\b")

        def _count_sqlite(statement):
            if not is_transaction_control(statement):
                _add(_literal.sub("?", statement))

        _tracing = sqlite_inline.traced(sqlite_inline.ANY_FILE, _count_sqlite)  # kept: the
        _tracing.__enter__()  # block stays open for the life of the process
        from bizmsg.kit import prepared

        _tracing_pg = prepared.traced(None, _add)  # prepared statements on PostgreSQL
        _tracing_pg.__enter__()
    except Exception as e:  # the service must start even if counting cannot
        print("bizmsg bench sql counter off:", e, file=sys.stderr)

    def _dump(*_):
        path = f"{_out}.{os.getpid()}.{_dumps[0]}.json"
        with open(path + ".tmp", "w") as f:
            json.dump(_counts.most_common(), f)
        os.replace(path + ".tmp", path)
        _counts.clear()
        _dumps[0] += 1

    signal.signal(signal.SIGUSR1, _dump)
"""
PROJECT = ("bizmsg/", "consent_svc/", "delivery_svc/", "billing_svc/", "ads_svc/")
SKIP = ("__main__.py", "kit/server.py")
LIBRARIES = (
    "sqlalchemy", "aiosqlite", "asyncpg", "grpc", "google/protobuf", "logging", "json",
)  # fmt: skip


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


class Profiler:
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        self.spy = py_spy()
        self._dumps: dict[int, int] = {}

    def env(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(self.out_dir), os.environ.get("PYTHONPATH")) if p)
        return {"PYTHONPATH": path, "BIZMSG_BENCH_SQLCOUNT": str(self.out_dir / "sql")}

    def _sql_dump(self, pid: int) -> list[tuple[str, int]]:
        n = self._dumps.get(pid, 0)
        path = self.out_dir / f"sql.{pid}.{n}.json"
        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        self._dumps[pid] = n + 1
        if not path.exists():
            return []
        return [(s, c) for s, c in json.loads(path.read_text())]

    def start(
        self, name: str, pids: dict[str, int], seconds: float
    ) -> list[subprocess.Popen[bytes]]:
        for pid in pids.values():
            self._sql_dump(pid)  # drops what came before this point
        if self.spy is None:
            return []
        return [
            subprocess.Popen(
                [
                    self.spy,
                    "record",
                    "--gil",
                    "--nonblocking",
                    "-r",
                    "100",
                    "-d",
                    str(max(1, round(seconds))),
                    "-f",
                    "raw",
                    "-o",
                    str(self.out_dir / f"{name}-{svc}.txt"),
                    "--pid",
                    str(pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for svc, pid in pids.items()
        ]

    def finish(
        self, name: str, pids: dict[str, int], spies: list[subprocess.Popen[bytes]], calls: int
    ) -> dict[str, Any]:
        for spy in spies:
            spy.wait()
        out: dict[str, Any] = {}
        for svc, pid in pids.items():
            sql = self._sql_dump(pid)
            total = sum(c for _, c in sql)
            out[svc] = {
                "sql_per_call": round(total / calls, 2) if calls else None,
                "sql_top": [[s, round(c / calls, 2)] for s, c in sql[:12]] if calls else [],
                "cpu_top": summarise(self.out_dir / f"{name}-{svc}.txt"),
            }
        return out


def summarise(raw: Path, top: int = 8) -> dict[str, list[list[Any]]]:
    """Shares of GIL-holding samples. `code`: by the innermost project function on the stack, so a
    library's work is charged to the project function that asked for it. `libraries`: by library,
    inclusive."""
    if not raw.exists():
        return {"code": [], "libraries": []}
    frame = re.compile(r"(.*) \((.*?):\d+\)$")
    total = 0
    code: Counter[str] = Counter()
    libs: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        innermost = "(no project frame: event loop, SQLAlchemy greenlets, driver threads)"
        seen: set[str] = set()
        for f in stack.split(";"):
            m = frame.match(f)
            if m is None:
                continue
            func, path = m.groups()
            if any(p in path for p in PROJECT) and not path.endswith(SKIP):
                innermost = f"{func} ({_short(path)})"
            for lib in LIBRARIES:
                if (path.startswith(lib + "/") or f"/{lib}/" in path) and lib not in seen:
                    seen.add(lib)
                    libs[lib] += n
        code[innermost] += n
    if total == 0:
        return {"code": [], "libraries": []}
    return {
        "code": [[k, round(100 * n / total, 1)] for k, n in code.most_common(top)],
        "libraries": [[k, round(100 * n / total, 1)] for k, n in libs.most_common()],
    }


def _short(path: str) -> str:
    for p in PROJECT:
        i = path.find(p)
        if i >= 0:
            return path[i:]
    return path
