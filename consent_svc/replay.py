"""request_id replay (AIP-155) for the calls service:delivery makes about a person:
RecordUserMessage and RecordBusinessReply.

The kit's shared idempotency table keys a row by the caller's principal and the request_id in
clear (delivery sends its message id) and fingerprints it with a plain SHA-256 of the request.
For delivery's calls the principal is always service:delivery, so nothing ties those rows to the
person on erasure, and the fingerprint is recomputable by anyone who knows a person_id and a
business_id: the rows would keep linking an erased person to their conversations. Here key and
fingerprint are HMACs under the service's secret, and each row carries the person's hash, so
ErasePerson deletes them together with everything else about the person.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf.message import Message
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.kit.auth import current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import AlreadyExists
from bizmsg.kit.storage import Database
from consent_svc import store

Resp = TypeVar("Resp", bound=Message)


class PersonReplay:
    def __init__(self, secret: bytes, clock: Clock) -> None:
        self._secret = secret
        self._clock = clock

    def _mac(self, data: bytes) -> str:
        return hmac.new(self._secret, data, hashlib.sha256).hexdigest()

    def key(self, method: str, request_id: str) -> str:
        return self._mac(f"{current_principal()}\n{method}\n{request_id}".encode())

    def fingerprint(self, request: Message) -> str:
        copy = type(request)()
        copy.CopyFrom(request)
        copy.ClearField("request_id")  # type: ignore[arg-type]
        return self._mac(copy.SerializeToString(deterministic=True))

    async def run(
        self,
        db: Database,
        method: str,
        request: Message,
        person_hash: str,
        response_type: type[Resp],
        work: Callable[[AsyncSession], Awaitable[Resp]],
    ) -> Resp:
        """`work` done and its answer stored in the same transaction, or the stored answer.

        The common case, a new request_id, costs no lookup: the answer is inserted with ON
        CONFLICT DO NOTHING after the work. When a row was there already (a retry, or a
        concurrent twin that committed first; PostgreSQL waits for it), this attempt is rolled
        back, so its work has no effect, and the stored answer is replayed.
        """
        key = self.key(method, request.request_id)  # type: ignore[attr-defined]
        fingerprint = self.fingerprint(request)
        for _ in range(2):
            try:
                async with db.write() as s:
                    response = await work(s)
                    # Flushes whatever the ORM holds (a new person) before the Core insert.
                    await s.flush()
                    stored = await store.save_answer(
                        await s.connection(),
                        {
                            "key": key,
                            "person_hash": person_hash,
                            "fingerprint": fingerprint,
                            "response": response.SerializeToString(deterministic=True),
                            "create_time": self._clock.now(),
                        },
                    )
                    if stored:
                        return response
                    raise _Answered
            except _Answered:
                break
            except IntegrityError:
                # A concurrent first contact of the same person committed first: run again.
                continue
        async with db.read() as s:
            seen = await store.answer(await s.connection(), key)
        if seen is None:
            raise AlreadyExists("CONFLICT", "a concurrent request with this request_id failed")
        if seen.fingerprint != fingerprint:
            raise AlreadyExists()
        return response_type.FromString(seen.response)


class _Answered(Exception):
    """Rolls back an attempt whose request_id has an answer already."""
