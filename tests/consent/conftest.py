"""Fixtures of the consent tests: the service in-process on the test's database and clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit.clock import ManualClock
from bizmsg.kit.testing import ServiceThread, metadata_for
from consent_svc.app import DEFINITION


@dataclass
class Consent:
    thread: ServiceThread
    stub: consent_pb2_grpc.ConsentServiceStub
    clock: ManualClock
    database_url: str

    def call(self, method: str, request: Any, principal: str) -> Any:
        return getattr(self.stub, method)(request, metadata=metadata_for(principal), timeout=20)

    def grant(self, person: str, business: str, *cats: int, **kw: Any) -> pb.GrantConsentResponse:
        req = pb.GrantConsentRequest(
            request_id=rid(),
            person_id=person,
            business_id=business,
            categories=list(cats),
            all_categories=not cats,
            collection_method=pb.COLLECTION_METHOD_WEB_FORM,
            notice=pb.Notice(text="We will send you offers.", locale="en-GB"),
            **kw,
        )
        return self.call("GrantConsent", req, f"user:{person}")

    def check(self, person: str, business: str, category: int) -> pb.CheckConsentResponse:
        req = pb.CheckConsentRequest(business_id=business, person_id=person, category=category)
        return self.call("CheckConsent", req, "service:delivery")


def rid() -> str:
    return uuid.uuid4().hex


@contextmanager
def serve(database_url: str, clock: ManualClock) -> Iterator[Consent]:
    """One consent service instance on the given database."""
    with ServiceThread(DEFINITION, database_url=database_url, clock=clock) as thread:
        channel = grpc.insecure_channel(thread.target)
        try:
            yield Consent(thread, consent_pb2_grpc.ConsentServiceStub(channel), clock, database_url)
        finally:
            channel.close()


@pytest.fixture
def consent(database_url: str, clock: ManualClock) -> Iterator[Consent]:
    with serve(database_url, clock) as one:
        yield one


@pytest.fixture
def replicas(database_url: str, clock: ManualClock) -> Iterator[tuple[Consent, Consent]]:
    """Two instances of the service on one database, as replicas behind a load balancer."""
    with serve(database_url, clock) as a, serve(database_url, clock) as b:
        yield a, b


def rpc_error(fn: Any, *args: Any) -> tuple[grpc.StatusCode, list[Any]]:
    """Call, expect an error, return its code and unpacked google.rpc.Status details."""
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    with pytest.raises(grpc.RpcError) as info:
        fn(*args)
    err: Any = info.value
    status = rpc_status.from_call(err)
    details: list[Any] = []
    if status is not None:
        for any_msg in status.details:
            for t in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.BadRequest,
                error_details_pb2.ResourceInfo,
            ):
                if any_msg.Is(t.DESCRIPTOR):
                    m = t()
                    any_msg.Unpack(m)
                    details.append(m)
    return err.code(), details


def reason_of(details: list[Any]) -> str:
    from google.rpc import error_details_pb2

    infos = [d for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1
    assert infos[0].domain == "consent.bizmsg"
    return str(infos[0].reason)


def fields_of(details: list[Any]) -> set[str]:
    from google.rpc import error_details_pb2

    return {
        v.field
        for d in details
        if isinstance(d, error_details_pb2.BadRequest)
        for v in d.field_violations
    }
