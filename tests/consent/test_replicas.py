"""Several replicas on one database: what one instance returned counts on the other at once, and
no CheckConsent that starts after a revocation or block returned says allowed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from bizmsg.common.v1 import common_pb2 as c
from bizmsg.consent.v1 import consent_pb2 as pb
from tests.consent.conftest import Consent, rid, rpc_error

DELIVERY = "service:delivery"


def test_what_one_replica_returned_counts_on_the_other(
    replicas: tuple[Consent, Consent],
) -> None:
    a, b = replicas
    key_a = a.call("GetReceiptKey", pb.GetReceiptKeyRequest(), "user:alice")
    key_b = b.call("GetReceiptKey", pb.GetReceiptKeyRequest(), "user:alice")
    assert key_a == key_b  # one signing key per database, whichever replica made it

    g = a.grant("alice", "acme", c.CATEGORY_MARKETING, c.CATEGORY_UTILITY)
    d = b.check("alice", "acme", c.CATEGORY_MARKETING)
    assert d.allowed and d.consent_id == g.consent.consent_id and d.consent_version == 1

    revoke = pb.RevokeConsentRequest(
        request_id=rid(), person_id="alice", business_id="acme", categories=[c.CATEGORY_MARKETING]
    )
    first = a.call("RevokeConsent", revoke, "user:alice")
    d = b.check("alice", "acme", c.CATEGORY_MARKETING)
    assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_REVOKED
    assert d.consent_version == 2
    # A retry that lands on the other replica replays the first answer, with no second effect.
    assert b.call("RevokeConsent", revoke, "user:alice") == first
    other = pb.RevokeConsentRequest(
        request_id=revoke.request_id, person_id="alice", business_id="acme", all_categories=True
    )
    code, _ = rpc_error(b.call, "RevokeConsent", other, "user:alice")
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert a.check("alice", "acme", c.CATEGORY_UTILITY).allowed

    block = pb.BlockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme")
    b.call("BlockBusiness", block, "user:alice")
    d = a.check("alice", "acme", c.CATEGORY_UTILITY)
    assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_BLOCKED
    unblock = pb.UnblockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme")
    assert a.call("UnblockBusiness", unblock, "user:alice").was_blocked
    assert b.check("alice", "acme", c.CATEGORY_UTILITY).allowed

    # Windows: the message recorded on one replica, the reply on the other.
    msg = pb.RecordUserMessageRequest(
        request_id=rid(),
        person_id="alice",
        business_id="acme",
        referral=c.Referral(click_id="clk-1", campaign_id="camp-1"),
    )
    recorded = a.call("RecordUserMessage", msg, DELIVERY)
    assert b.call("RecordUserMessage", msg, DELIVERY) == recorded
    pending = b.check("alice", "acme", c.CATEGORY_SERVICE)
    assert pending.allowed and pending.free_entry_pending
    reply = pb.RecordBusinessReplyRequest(request_id=rid(), business_id="acme", person_id="alice")
    assert b.call("RecordBusinessReply", reply, DELIVERY).free_entry_opened
    d = a.check("alice", "acme", c.CATEGORY_SERVICE)
    assert d.allowed and d.window.kind == c.WINDOW_KIND_FREE_ENTRY and not d.free_entry_pending

    erased = b.call(
        "ErasePerson", pb.ErasePersonRequest(request_id=rid(), person_id="alice"), "admin"
    )
    assert erased.erased
    d = a.check("alice", "acme", c.CATEGORY_UTILITY)
    assert not d.allowed and d.reason == pb.CONSENT_DECISION_REASON_NO_CONSENT
    code, _ = rpc_error(
        a.call, "ExportPersonData", pb.ExportPersonDataRequest(person_id="alice"), "admin"
    )
    assert code == grpc.StatusCode.NOT_FOUND


# (start of the check, allowed, which replica)
Observation = tuple[float, bool, int]


def _race(
    replicas: tuple[Consent, Consent],
    categories: tuple[int, ...],
    change: Callable[[], None],
    *,
    threads: int = 6,
) -> tuple[list[Observation], float]:
    """Checks from several threads, spread over both replicas and the given categories, while
    `change` runs; returns every check and the moment `change` returned."""
    results: list[Observation] = []
    stop = threading.Event()

    def checker(n: int) -> None:
        i = n
        while not stop.is_set():
            replica, category = i % 2, categories[(i // 2) % len(categories)]
            i += 1
            started = time.monotonic()
            d = replicas[replica].check("alice", "acme", category)
            results.append((started, d.allowed, replica))  # list.append is atomic

    def wait_for(enough: Callable[[], bool]) -> None:
        # Bounded: on a loaded machine the checks may be slow, but they do come.
        limit = time.monotonic() + 30
        while not enough() and time.monotonic() < limit:
            time.sleep(0.01)

    workers = [threading.Thread(target=checker, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    try:
        # Let allowed answers come from both replicas before the change...
        wait_for(lambda: all(sum(1 for _, ok, r in results if ok and r == x) >= 20 for x in (0, 1)))
        change()
        returned = time.monotonic()
        # ...and plenty of checks start on both after it returned.
        wait_for(
            lambda: all(
                sum(1 for s, _, r in results if s > returned and r == x) >= 50 for x in (0, 1)
            )
        )
    finally:
        stop.set()
        for t in workers:
            t.join()
    return results, returned


def _assert_never_late(results: list[Observation], returned: float) -> None:
    for replica in (0, 1):
        before = [ok for s, ok, r in results if r == replica and s < returned]
        after = [ok for s, ok, r in results if r == replica and s > returned]
        assert any(before), f"replica {replica}: no allowed check before the change"
        assert len(after) >= 50, f"replica {replica}: too few checks after the change"
        assert not any(after), f"replica {replica}: {sum(after)} late 'allowed' answers"


def test_no_check_on_any_replica_is_allowed_after_a_revocation_returned(
    replicas: tuple[Consent, Consent],
) -> None:
    a, _ = replicas
    a.grant("alice", "acme", c.CATEGORY_MARKETING, c.CATEGORY_UTILITY)
    revoke = pb.RevokeConsentRequest(
        request_id=rid(), person_id="alice", business_id="acme", all_categories=True
    )
    results, returned = _race(
        replicas,
        (c.CATEGORY_MARKETING, c.CATEGORY_UTILITY),
        lambda: a.call("RevokeConsent", revoke, "user:alice"),
    )
    _assert_never_late(results, returned)


def test_no_check_on_any_replica_is_allowed_after_a_block_returned(
    replicas: tuple[Consent, Consent],
) -> None:
    a, b = replicas
    a.grant("alice", "acme", c.CATEGORY_MARKETING)
    # An open customer-service window too: a block closes it as well.
    msg = pb.RecordUserMessageRequest(request_id=rid(), person_id="alice", business_id="acme")
    a.call("RecordUserMessage", msg, DELIVERY)
    block = pb.BlockBusinessRequest(request_id=rid(), person_id="alice", business_id="acme")
    results, returned = _race(
        replicas,
        (c.CATEGORY_MARKETING, c.CATEGORY_SERVICE),
        lambda: b.call("BlockBusiness", block, "user:alice"),
    )
    _assert_never_late(results, returned)
