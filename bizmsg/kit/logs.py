"""Structured logs: one JSON object per line, so a request id can be grepped across services.

A service logs a line per call (and per item of a multiplexed stream), so the handler is on
the hot path: lines logged on the event loop are written together once the loop has run what
is ready (one write for all the calls that ended meanwhile, not one each), and lines from
other threads, or with no loop running, are written at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from typing import IO, Any

# One encoder for every line: json.dumps(default=...) would build a new one per call.
_ENCODER = json.JSONEncoder(default=str)
# JSONEncoder.encode still makes a new C encoder on every call; for the per-call line
# (info_fast: flat fields of our own), one made once, with the same output: 2.3 against 4.8 us
# for a call's line. No circular-reference check (markers=None): those fields never nest.
_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_LINE_ENCODER = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ": ", ", ", False, False, True
    )
)


def _encode_line(entry: dict[str, Any]) -> str:
    if _LINE_ENCODER is None:
        return _ENCODER.encode(entry)
    return "".join(_LINE_ENCODER(entry, 0))


def _line(created: float, level: str, logger: str, message: str, fields: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    if isinstance(fields, dict):
        entry.update(fields)
    return entry


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = _line(
            record.created,
            record.levelname,
            record.name,
            record.getMessage(),
            getattr(record, "fields", None),
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _ENCODER.encode(entry)


def _sole_handler(logger: logging.Logger) -> LoopBatchedHandler | None:
    """The LoopBatchedHandler with our formatter that alone gets `logger`'s INFO records, with no
    filter on the way; None when records go anywhere else too."""
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        if node.handlers:
            if node.parent is not None or len(node.handlers) != 1:
                return None  # handlers below the root, or several
            handler = node.handlers[0]
            if (
                isinstance(handler, LoopBatchedHandler)
                and type(handler.formatter) is JsonFormatter
                and not handler.filters
                and handler.level <= logging.INFO
            ):
                return handler
            return None
        if not node.propagate:
            return None
        node = node.parent
    return None


def info_fast(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """logger.info(message, extra={"fields": fields}), for the one line every call logs.

    When the record would reach only the handler `configure` installs (no other handler, no
    filter, a formatter of ours), the JSON line is made and queued here, without a LogRecord
    and the handler chain: a line costs 5.5 us instead of 7.6 in a microbenchmark, and each
    service logs a line per call and per stream item. Otherwise (a test's caplog, say) the
    record goes the usual way."""
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _sole_handler(logger)
    if handler is not None:
        line = _encode_line(_line(time.time(), "INFO", logger.name, message, fields))
        with handler.lock:  # type: ignore[union-attr]
            handler.emit_line(line)
        return
    # What logger.info would do, less finding the caller's source line (no field shows it).
    logger.handle(
        logger.makeRecord(
            logger.name, logging.INFO, "", 0, message, (), None, extra={"fields": fields}
        )
    )


class LoopBatchedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that writes the lines logged on an event loop once per loop pass."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        # The loop a flush is scheduled on (a closed loop never runs it: then schedule anew).
        self._flush_on: asyncio.AbstractEventLoop | None = None
        self._flush_thread = 0  # the thread that loop runs on

    def emit(self, record: logging.LogRecord) -> None:  # called holding self.lock
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.emit_line(line)

    def emit_line(self, line: str) -> None:
        """Queues a formatted line (see info_fast); written at once off the loop."""
        flush_on = self._flush_on
        if (
            flush_on is not None
            and threading.get_ident() == self._flush_thread
            and flush_on.is_running()
        ):
            # A flush is scheduled on the loop running on this thread. Checked before asking
            # for the running loop, which costs a getpid() system call on Python 3.11.
            self._pending.append(line)
            return
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        self._pending.append(line)
        if loop is None:
            self.flush()  # another thread, or no loop: at once (after what the loop has pending)
        elif self._flush_on is not loop:
            self._flush_on = loop
            self._flush_thread = threading.get_ident()
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._flush_on = None
            if not self._pending:
                return
            lines, self._pending = self._pending, []
            try:
                self.stream.write("\n".join(lines) + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # stderr is gone (closed at exit): nowhere left to write them


def configure(level: str, service: str) -> None:
    # No field shows the thread or process a record was made in: do not look them up per record.
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopBatchedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("bizmsg").info("logging configured", extra={"fields": {"service": service}})
