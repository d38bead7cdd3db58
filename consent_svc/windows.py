"""Conversation windows: the rules, as pure functions of a relation's times and the clock.

- A person's message opens or extends the customer-service window to 24 h after it.
- A message carrying a click-to-chat referral also arms a free-entry entry point for 24 h
  (unless a free-entry window is already open).
- The business's first reply while the entry point is armed opens the 72-hour free-entry window
  (RecordBusinessReply); later replies change nothing. CheckConsent is read-only and reports
  FREE_ENTRY both for an open window and for an armed entry point (the reply would open it).
- A window is open while now < expire_time: the 24-hour window is closed at 24 h exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from bizmsg.common.v1 import common_pb2

SERVICE_WINDOW = timedelta(hours=24)
ENTRY_POINT = timedelta(hours=24)
FREE_ENTRY_WINDOW = timedelta(hours=72)


@dataclass(frozen=True)
class WindowTimes:
    service_expire_time: datetime | None = None
    entry_expire_time: datetime | None = None
    free_entry_expire_time: datetime | None = None


@dataclass(frozen=True)
class OpenWindow:
    kind: int  # common_pb2.WindowKind
    expire_time: datetime | None
    free_entry_pending: bool = False


NO_WINDOW = OpenWindow(common_pb2.WINDOW_KIND_NONE, None)


def _open(t: datetime | None, now: datetime) -> bool:
    return t is not None and now < t


def current_window(w: WindowTimes, now: datetime) -> OpenWindow:
    if _open(w.free_entry_expire_time, now):
        return OpenWindow(common_pb2.WINDOW_KIND_FREE_ENTRY, w.free_entry_expire_time)
    if _open(w.entry_expire_time, now):
        return OpenWindow(common_pb2.WINDOW_KIND_FREE_ENTRY, now + FREE_ENTRY_WINDOW, True)
    if _open(w.service_expire_time, now):
        return OpenWindow(common_pb2.WINDOW_KIND_CUSTOMER_SERVICE, w.service_expire_time)
    return NO_WINDOW


def after_user_message(w: WindowTimes, now: datetime, *, referral: bool) -> WindowTimes:
    """The times after a person's message. RecordUserMessage applies this in one upsert
    (store._user_message_upsert), which evaluates the free-entry condition on the stored row:
    keep the two in step."""
    entry = w.entry_expire_time
    if referral and not _open(w.free_entry_expire_time, now):
        entry = now + ENTRY_POINT
    return WindowTimes(now + SERVICE_WINDOW, entry, w.free_entry_expire_time)


def after_business_reply(w: WindowTimes, now: datetime) -> tuple[WindowTimes, bool]:
    """The new times and whether this reply opened the free-entry window."""
    if _open(w.entry_expire_time, now) and not _open(w.free_entry_expire_time, now):
        return WindowTimes(w.service_expire_time, None, now + FREE_ENTRY_WINDOW), True
    if w.entry_expire_time is not None and not _open(w.entry_expire_time, now):
        # The entry point lapsed unanswered: it can never open a window any more.
        return WindowTimes(w.service_expire_time, None, w.free_entry_expire_time), False
    return w, False
