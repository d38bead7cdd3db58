"""Who may call what. A person manages only their own consents and data; a business checks only
for itself; service:delivery checks and records for anyone; service:ads reads ad preferences;
admin exports, erases and audits histories. Everything else is PERMISSION_DENIED."""

from __future__ import annotations

from bizmsg.kit.auth import Principal, current_principal
from bizmsg.kit.errors import PermissionDenied


def _deny(p: Principal, what: str) -> PermissionDenied:
    return PermissionDenied(message=f"{p} may not {what}")


def is_self(p: Principal, person_id: str) -> bool:
    return p.kind == "user" and p.id == person_id


def own_data(person_id: str, what: str) -> Principal:
    """The person themself only."""
    p = current_principal()
    if not is_self(p, person_id):
        raise _deny(p, what)
    return p


def own_data_or_admin(person_id: str, what: str) -> Principal:
    p = current_principal()
    if not (p.is_admin or is_self(p, person_id)):
        raise _deny(p, what)
    return p


def check_consent(business_id: str) -> None:
    p = current_principal()
    if not (p.is_service("delivery") or (p.kind == "business" and p.id == business_id)):
        raise _deny(p, "check consent for this business")


def delivery_only(what: str) -> None:
    p = current_principal()
    if not p.is_service("delivery"):
        raise _deny(p, what)


def read_ad_preferences(person_id: str) -> bool:
    """True when the caller is service:ads (which sees interests only if personalisation is on)."""
    p = current_principal()
    if p.is_service("ads"):
        return True
    if not is_self(p, person_id):
        raise _deny(p, "read these ad preferences")
    return False


def verify_history(person_id: str) -> None:
    p = current_principal()
    # A history_id (after erasure) names no person: only admin audits by it.
    if not (p.is_admin or (person_id and is_self(p, person_id))):
        raise _deny(p, "verify this history")
