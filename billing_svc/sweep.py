"""The expiry sweep: authorizations nobody captured or voided before their expire_time are
voided by the service itself, so no reservation holds a wallet's money for ever."""

from __future__ import annotations

import logging

from billing_svc import charges, store
from bizmsg.kit.clock import Clock
from bizmsg.kit.storage import Database

log = logging.getLogger("billing.sweep")

BATCH = 200


async def sweep_expired(db: Database, clock: Clock) -> int:
    """Void every authorization past its timeout; returns how many were voided.

    One transaction per authorization: each locks its own wallet, so batching several
    wallets in one transaction could lock them in an order that deadlocks with charges.
    """
    voided = 0
    while True:
        now = clock.now()
        async with db.read() as session:
            ids = await store.expired_authorizations(session, charges.AUTHORIZED, now, BATCH)
        if not ids:
            break
        for authorization_id in ids:
            async with db.write() as session:
                if await charges.expire_one(await session.connection(), now, authorization_id):
                    voided += 1
        if len(ids) < BATCH:
            break
    if voided:
        log.info("expired authorizations voided", extra={"fields": {"count": voided}})
    return voided
