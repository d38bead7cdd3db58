"""Marking posted impression charges, in batches instead of one transaction per serve.

After billing posted an impression's charge, ServeAd only notes the id here; a background
job moves the noted impressions from PENDING to CHARGED in one transaction. Losing the notes
(a crash) costs nothing but a repeated question: the settlement job finds the impressions
still PENDING and asks billing again with the same request_id, which billing answers from its
idempotency record without charging twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ads_svc import store
from ads_svc.models import CHARGED
from bizmsg.kit.storage import Database


@dataclass
class Confirmations:
    db: Database
    _posted: list[str] = field(default_factory=list)

    def posted(self, impression_id: str) -> None:
        self._posted.append(impression_id)

    async def flush(self) -> int:
        """Mark what was noted so far; how many impressions moved."""
        batch, self._posted = self._posted, []
        if not batch:
            return 0
        async with self.db.write() as session:
            return await store.settle_impressions(session, batch, CHARGED)
