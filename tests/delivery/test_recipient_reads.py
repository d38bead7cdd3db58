"""A business's send reads its recipient, limits and stored answer in one statement
(store.RecipientReader). On PostgreSQL the sends that arrive together share one round trip
(the statement run once per send, pipelined), and each gets exactly the rows its own read
gets."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert

from bizmsg.kit.prepared import traced
from bizmsg.kit.storage import Database
from delivery_svc import store
from delivery_svc.models import (
    BusinessLimits,
    ConversationStart,
    Device,
    RateCounter,
    idempotency_keys,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 2, tzinfo=UTC)


def _device(owner: str, device_id: str, country: str, when: datetime) -> dict[str, Any]:
    return {
        "owner": owner,
        "device_id": device_id,
        "identity_key": b"i",
        "signed_pre_key": b"s",
        "signed_pre_key_signature": b"g",
        "country_code": country,
        "update_time": when,
    }


async def _seed(db: Database) -> None:
    async with db.write() as s:
        await s.execute(
            insert(Device),
            [
                _device("user:ann", "d1", "DE", T0),
                _device("user:ann", "d2", "FR", T1),  # the newer device names the country
                _device("user:bob", "d1", "", T0),
            ],
        )
        await s.execute(
            insert(BusinessLimits),
            [{"business_id": "shop", "messages_per_second": 50, "tier": 2, "update_time": T0}],
        )
        await s.execute(
            insert(RateCounter),
            [
                {"window_start": 100, "key": "mps:shop", "count": 7},
                {"window_start": 60, "key": "pair:shop:ann", "count": 3},
            ],
        )
        await s.execute(
            insert(ConversationStart),
            [{"business_id": "shop", "person_id": "ann", "start_time": T1}],
        )
        await s.execute(
            insert(idempotency_keys),
            [
                {
                    "principal": "business:shop",
                    "method": "Send",
                    "request_id": "r-done",
                    "fingerprint": "f",
                    "response": b"answer",
                    "create_time": T0,
                }
            ],
        )


def _send(business: str, person: str, request_id: str) -> tuple[Any, ...]:
    counters = ((f"mps:{business}", 100), (f"pair:{business}:{person}", 60))
    key = {"principal": f"business:{business}", "method": "Send", "request_id": request_id}
    return (f"user:{person}", business, person, counters, key)


SENDS = [
    _send("shop", "ann", "r-done"),  # two devices, every limit row, a stored answer
    _send("shop", "ann", "r-new"),
    _send("shop", "bob", "r-1"),  # one device, no counters or conversation yet
    _send("other", "ann", "r-2"),  # no limits row for this business
    _send("shop", "nobody", "r-3"),  # no device at all
    _send("shop", "ann", "r-done"),  # the same send twice in one batch
]


def test_sends_read_together_get_what_each_reads_alone(database_url: str, backend: str) -> None:
    async def go() -> tuple[list[store.Recipient], list[store.Recipient], list[str]]:
        db = Database(database_url)
        try:
            await db.migrate("delivery_svc:migrations")
            await _seed(db)
            alone = []
            for send in SENDS:
                alone.append(await store.RecipientReader(db).recipient_and_limits(*send))
            reader = store.RecipientReader(db)
            seen: list[str] = []
            with traced(None, seen.append):
                together = await asyncio.gather(
                    *(reader.recipient_and_limits(*send) for send in SENDS)
                )
            return alone, list(together), seen
        finally:
            await db.dispose()

    alone, together, seen = asyncio.run(go())
    assert together == alone
    ann = alone[0]
    assert (ann.devices, ann.country) == ({"d1", "d2"}, "FR")
    assert ann.limits == store.LimitState(50, 2, 7, 3, T1)
    assert ann.answered == ("f", b"answer")
    assert alone[1].answered == (None, None)
    assert alone[2].limits == store.LimitState(50, 2, 7, 0, None)
    assert alone[3].limits == store.LimitState(None, None, 0, 0, None)
    assert alone[4] == store.Recipient(set(), "", None, None)
    if backend == "postgresql":  # one round trip for the six sends (one of them a twin)
        assert len(seen) == 1 and "bizmsg_slot" in seen[0], seen
