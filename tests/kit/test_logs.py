"""The log handler: one JSON line per record; lines logged on an event loop go out together."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading

from bizmsg.kit.logs import JsonFormatter, LoopBatchedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def _logger(stream: CountingStream) -> logging.Logger:
    handler = LoopBatchedHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger(f"bizmsg.test.logs.{id(stream)}")
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


def _lines(stream: CountingStream) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_logged_on_the_loop_are_written_once_the_loop_has_run_what_was_ready() -> None:
    stream = CountingStream()
    log = _logger(stream)

    async def scenario() -> None:
        for i in range(3):
            log.info("rpc", extra={"fields": {"request_id": f"r{i}", "duration_ms": 0.5}})
        assert stream.getvalue() == ""  # not yet: the loop has not finished this pass
        await asyncio.sleep(0)
        assert [line["request_id"] for line in _lines(stream)] == ["r0", "r1", "r2"]
        assert stream.writes == 1
        log.info("later")  # the next pass gets a flush of its own
        await asyncio.sleep(0)
        assert stream.writes == 2

    asyncio.run(scenario())
    first = _lines(stream)[0]
    assert first["message"] == "rpc" and first["level"] == "INFO" and first["duration_ms"] == 0.5
    assert str(first["time"]).endswith("+00:00")


def test_lines_from_other_threads_or_with_no_loop_are_written_at_once_and_in_order() -> None:
    stream = CountingStream()
    log = _logger(stream)
    log.info("no loop")
    assert [line["message"] for line in _lines(stream)] == ["no loop"]

    async def scenario() -> None:
        log.info("on the loop")
        thread = threading.Thread(target=log.info, args=("from a thread",))
        thread.start()
        thread.join()
        # The thread's write took the loop's waiting line along, before its own.
        assert [line["message"] for line in _lines(stream)][1:] == ["on the loop", "from a thread"]

    asyncio.run(scenario())


def test_a_flush_scheduled_on_a_loop_that_closed_does_not_hold_lines_back() -> None:
    stream = CountingStream()
    log = _logger(stream)
    loop = asyncio.new_event_loop()
    # Logged while the loop runs its last pass: the flush it schedules never runs.
    loop.run_until_complete(asyncio.sleep(0, result=None))
    loop.call_soon(log.info, "last")
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()

    async def scenario() -> None:
        log.info("next")
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert [line["message"] for line in _lines(stream)] == ["last", "next"]


def test_info_fast_writes_what_logger_info_would_and_steps_aside_for_other_handlers() -> None:
    """info_fast skips the LogRecord when our handler alone gets the line: the line is the one
    JsonFormatter makes of logger.info(message, extra={"fields": ...}), time aside. With another
    handler on the way (a test's caplog), the record goes the usual way and reaches both."""
    from bizmsg.kit.logs import _sole_handler, info_fast

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    stream = CountingStream()
    handler = LoopBatchedHandler(stream)
    handler.setFormatter(JsonFormatter())
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    log = logging.getLogger("bizmsg.test.fastlog")
    fields = {"service": "s", "method": "/p.S/M", "code": "OK", "duration_ms": 1.5}
    try:
        assert _sole_handler(log) is handler
        info_fast(log, "rpc", fields)
        log.info("rpc", extra={"fields": fields})
        handler.flush()
        fast, usual = _lines(stream)
        assert fast.pop("time") and usual.pop("time")
        assert fast == usual == {"level": "INFO", "logger": log.name, "message": "rpc", **fields}

        seen: list[logging.LogRecord] = []
        other = logging.Handler()
        other.emit = seen.append  # type: ignore[method-assign]
        root.addHandler(other)
        assert _sole_handler(log) is None
        info_fast(log, "rpc", fields)
        handler.flush()
        assert len(_lines(stream)) == 3 and len(seen) == 1
        assert seen[0].fields == fields  # type: ignore[attr-defined]
        root.removeHandler(other)

        log.setLevel(logging.WARNING)  # below the logger's level: nothing at all
        info_fast(log, "rpc", fields)
        handler.flush()
        assert len(_lines(stream)) == 3
    finally:
        log.setLevel(logging.NOTSET)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
