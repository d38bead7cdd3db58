"""The eligible bidders of one serve, best first, read from the store a page at a time.

A serve needs the best eligible bidder and the one ranked after it (for its second price);
the ones after that only when a serve falls through (the budget gone at reservation, billing
refusing). So instead of reading, converting, filtering and ranking every matching campaign
(up to the candidate limit: 200 of them in a busy country), a serve walks the matching
campaigns in the store's score order a page at a time, and runs the filters and the exact
auction order only on what it walks. Its work no longer grows with the number of matching
campaigns, and its answers are those of judging all of them at once (eligibility.eligible,
then auction.rank):

- The store orders by a float estimate of the score ("hint"). The exact order (auction.rank:
  rationals, equal scores ordered by a per-serve rotation) can differ from it only among
  hints within rounding of each other, so a page is settled only down to the hints clearly
  above its last one; the rest is read again with the next page. A run of equal scores is
  therefore always ranked as a whole, and every settled campaign outranks every later one.
- The candidate limit covers the same campaigns: the first `limit` in the store's order.
- The filters judge each campaign as before; pacing's coin is drawn only for the campaigns
  reached, and the person's preference is asked for only when one of them targets interests.
- When nothing passes, every candidate up to the limit is judged, so the no-fill reason is
  the one the filters over all of them give (or BELOW_RESERVE).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from ads_svc import auction
from ads_svc.eligibility import Audience, Candidate, Filters, NoFill, audience, reason_for

# The first page; each further page is twice the one before, so a serve that has to go deep
# (many capped or paced campaigns) needs few reads.
FIRST_PAGE = 16
# Hints closer than this (relative) to a page's last one may rank either side of it exactly.
TOLERANCE = 1e-9


def first_page_limit(limit: int) -> int:
    """How many campaigns the first page (read by the caller, see Shortlist) must ask for."""
    return min(FIRST_PAGE, limit)


@dataclass(frozen=True)
class Page:
    """Matching campaigns in the store's order, each with its hint, and the person's recent
    impressions of the frequency-capped ones among them (by campaign id)."""

    candidates: Sequence[tuple[Candidate, float]]
    recent: Mapping[str, Sequence[datetime]]


class PageReader(Protocol):
    def __call__(self, at_most: float | None, size: int) -> Awaitable[Page]:
        """The first `size` matching campaigns in the store's order whose hint is at most
        `at_most` (all when None)."""
        ...


@dataclass(frozen=True)
class Bidder:
    ranked: auction.Ranked
    candidate: Candidate


NOBODY = audience(False, (), ())


class Shortlist:
    """Eligible bidders of one serve in rank order, judged as they are asked for."""

    def __init__(
        self,
        first: Page,
        read: PageReader,
        ask_audience: Callable[[], Awaitable[Audience]],
        *,
        limit: int,
        reserve_micros: int,
        seed: str,
        now: datetime,
        draw: Callable[[], float],
    ) -> None:
        self._first: Page | None = first
        self._read = read
        self._ask_audience = ask_audience
        self._asked = False
        self._limit = limit
        self._reserve = reserve_micros
        self._seed = seed
        self._recent: dict[str, Sequence[datetime]] = {}
        # Until a campaign that targets interests turns up, nobody's interests are needed.
        self._filters = Filters(NOBODY, self._recent, now, draw)
        self._page_size = FIRST_PAGE
        self._at_most: float | None = None  # the hint bound of the next page
        self._taken: set[str] = set()  # settled campaign ids (at most `limit`)
        self._all_read = False
        self._below_reached = False  # settled past the reserve: later ones are all below it
        self._queue: deque[tuple[auction.Ranked, Candidate]] = deque()  # settled, not judged
        self._below: list[Candidate] = []  # settled, under the reserve, not judged
        self._eligible: list[Bidder] = []
        self._worst = 0  # the latest first failure of any judged candidate

    async def bidder(self, position: int) -> Bidder | None:
        """The eligible bidder at `position` in rank order (0: the winner), None if fewer."""
        while len(self._eligible) <= position:
            if self._queue:
                ranked, c = self._queue.popleft()
                failure = self._filters.first_failure(c)
                if failure is None:
                    self._eligible.append(Bidder(ranked, c))
                else:
                    self._worst = max(self._worst, failure)
            elif not (self._all_read or self._below_reached):
                await self._settle_next()
            else:
                return None
        return self._eligible[position]

    async def no_fill_reason(self) -> NoFill:
        """Why there is no bidder at all (after bidder(0) gave None): what the filters give
        over every candidate up to the limit, those under the reserve included."""
        while not self._all_read:
            await self._settle_next()
        passed_below = False
        for c in self._below:
            failure = self._filters.first_failure(c)
            if failure is None:
                passed_below = True
            else:
                self._worst = max(self._worst, failure)
        if passed_below:
            return NoFill.BELOW_RESERVE
        return reason_for(bool(self._taken), self._worst)

    async def _settle_next(self) -> None:
        """Read pages until some campaigns settle (or none are left), and queue them."""
        while True:
            want = min(self._page_size, self._limit - len(self._taken))
            if want <= 0:
                self._all_read = True
                return
            page = self._first or await self._read(self._at_most, want)
            self._first = None
            rows = [(c, h) for c, h in page.candidates if c.campaign_id not in self._taken]
            if len(page.candidates) < want or len(self._taken) + len(rows) >= self._limit:
                # All that is left (or all the limit allows, in the store's order).
                self._all_read = True
                settled = [c for c, _ in rows[: self._limit - len(self._taken)]]
            else:
                floor = page.candidates[-1][1]
                cut = floor + abs(floor) * TOLERANCE + TOLERANCE
                settled = [c for c, h in rows if h > cut]
                self._page_size *= 2
                if not settled:
                    continue  # one run of (near-)equal scores fills the page: read more at once
                self._at_most = cut
            self._recent.update(page.recent)
            await self._queue_settled(settled)
            return

    async def _queue_settled(self, settled: list[Candidate]) -> None:
        if not self._asked and any(c.interests for c in settled):
            self._asked = True
            self._filters.who = await self._ask_audience()
        self._taken.update(c.campaign_id for c in settled)
        if self._below_reached:
            # Past a campaign under the reserve, every later one is under it too.
            self._below.extend(settled)
            return
        by_id = {c.campaign_id: c for c in settled}
        ranked = auction.rank(
            [
                auction.Bidder(c.campaign_id, c.kind, c.bid_micros, c.impressions, c.clicks)
                for c in settled
            ],
            self._reserve,
            seed=self._seed,
        )
        for r in ranked:
            self._queue.append((r, by_id.pop(r.bidder.campaign_id)))
        if by_id:
            self._below.extend(by_id.values())
            self._below_reached = True
