"""CheckConsent's rule, a pure function of one relation row and the clock.

A block stops everything, windows included. MARKETING / UTILITY / AUTHENTICATION need an active,
unexpired opt-in for that category. SERVICE needs an open customer-service or free-entry window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2 as pb
from consent_svc import categories
from consent_svc.windows import NO_WINDOW, OpenWindow, WindowTimes, current_window


@dataclass(frozen=True)
class RelationState:
    consent_id: str | None
    consent_version: int
    granted: int
    revoked: int
    consent_expire_time: datetime | None
    blocked: bool
    windows: WindowTimes


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: int  # pb.ConsentDecisionReason
    window: OpenWindow
    consent_id: str
    consent_version: int


def decide(state: RelationState | None, category: int, now: datetime) -> Decision:
    if state is None:
        reason = (
            pb.CONSENT_DECISION_REASON_NO_OPEN_WINDOW
            if category == common_pb2.CATEGORY_SERVICE
            else pb.CONSENT_DECISION_REASON_NO_CONSENT
        )
        return Decision(False, reason, NO_WINDOW, "", 0)
    cid, version = state.consent_id or "", state.consent_version
    if state.blocked:
        return Decision(False, pb.CONSENT_DECISION_REASON_BLOCKED, NO_WINDOW, cid, version)
    window = current_window(state.windows, now)
    if category == common_pb2.CATEGORY_SERVICE:
        if window.kind == common_pb2.WINDOW_KIND_NONE:
            return Decision(False, pb.CONSENT_DECISION_REASON_NO_OPEN_WINDOW, window, cid, version)
        return Decision(True, pb.CONSENT_DECISION_REASON_ALLOWED, window, cid, version)
    b = categories.bit(category)
    if state.granted & b:
        if state.consent_expire_time is not None and now >= state.consent_expire_time:
            return Decision(False, pb.CONSENT_DECISION_REASON_EXPIRED, window, cid, version)
        return Decision(True, pb.CONSENT_DECISION_REASON_ALLOWED, window, cid, version)
    if state.revoked & b:
        return Decision(False, pb.CONSENT_DECISION_REASON_REVOKED, window, cid, version)
    if state.granted == 0 and state.revoked == 0:
        return Decision(False, pb.CONSENT_DECISION_REASON_NO_CONSENT, window, cid, version)
    return Decision(False, pb.CONSENT_DECISION_REASON_CATEGORY_NOT_GRANTED, window, cid, version)
