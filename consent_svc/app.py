"""The consent service's definition and build(): keys loaded (or made once) from the database,
SQLite connections set to overwrite deleted content, the ledger and the servicer."""

from __future__ import annotations

import hashlib
import hmac
import os
from typing import Any

from sqlalchemy import event

from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.server import Runtime, ServiceDefinition
from consent_svc import store
from consent_svc.crypto import ReceiptSigner
from consent_svc.ledger import Ledger
from consent_svc.models import idempotency_keys
from consent_svc.replay import PersonReplay
from consent_svc.rpc import ConsentServicer


async def build(runtime: Runtime) -> ConsentServicer:
    db = runtime.db
    if db.dialect == "sqlite":

        @event.listens_for(db.engine.sync_engine, "connect")
        def _secure_delete(dbapi_conn: Any, _record: Any) -> None:
            # Deleted rows are zeroed on disk, so an erased person leaves no bytes behind.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA secure_delete=ON")
            cur.close()

        # Connections opened for the migration predate the listener.
        await db.engine.dispose()
    hash_secret = await store.load_secret(db, runtime.clock, "person_hash", lambda: os.urandom(32))
    signing_key = await store.load_secret(
        db, runtime.clock, "receipt_ed25519", ReceiptSigner.generate
    )
    ledger = Ledger(db, runtime.clock, hash_secret, ReceiptSigner(signing_key))
    # A key of its own for replay MACs, derived so person hashes and replay keys never collide.
    replay_key = hmac.new(hash_secret, b"person-replay", hashlib.sha256).digest()
    return ConsentServicer(
        ledger,
        Idempotency(idempotency_keys, runtime.clock),
        PersonReplay(replay_key, runtime.clock),
    )


DEFINITION = ServiceDefinition(
    name="consent",
    service_name="bizmsg.consent.v1.ConsentService",
    add_servicer=consent_pb2_grpc.add_ConsentServiceServicer_to_server,
    build=build,
    migrations="consent_svc:migrations",
)
