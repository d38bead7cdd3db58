"""A database connection that dies under a service gives UNAVAILABLE, never INTERNAL, and the
next call works (the pool has no pre-ping; it drops the dead connection instead)."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc
import pytest
from sqlalchemy import make_url

from bizmsg.consent.v1 import consent_pb2, consent_pb2_grpc
from bizmsg.kit.testing import ServiceThread, metadata_for
from consent_svc.app import DEFINITION

from .conftest import PG_ADMIN_URL


async def _kill_backends(dbname: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            dbname,
        )
        return len(rows)
    finally:
        await conn.close()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_lost_connections_are_unavailable_then_recover(backend: str, database_url: str) -> None:
    md = metadata_for("user:alice")
    req = consent_pb2.GetAdPreferencesRequest(person_id="alice")
    with ServiceThread(DEFINITION, database_url=database_url) as svc:
        stub = consent_pb2_grpc.ConsentServiceStub(grpc.insecure_channel(svc.target))
        for _ in range(3):  # fill the pool with live connections
            stub.GetAdPreferences(req, metadata=md, timeout=10)
        assert asyncio.run(_kill_backends(make_url(database_url).database)) > 0
        codes = []
        for _ in range(6):
            try:
                stub.GetAdPreferences(req, metadata=md, timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as e:
                codes.append(e.code())
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        assert codes[-1] == grpc.StatusCode.OK, codes
