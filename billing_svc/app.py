"""The billing service definition: servicer, background sweep, settings."""

from __future__ import annotations

from datetime import timedelta

from billing_svc.rpc import BillingServicer
from billing_svc.sweep import sweep_expired
from bizmsg.billing.v1 import billing_pb2_grpc
from bizmsg.kit.server import Runtime, ServiceDefinition

# Longer than the longest message TTL (30 days), so delivery resolves charges first.
DEFAULT_AUTHORIZATION_TIMEOUT_SECONDS = 31 * 24 * 3600
DEFAULT_REVENUE_SHARDS = 1
MAX_REVENUE_SHARDS = 64


async def build(runtime: Runtime) -> BillingServicer:
    settings = runtime.settings
    timeout = settings.env_int(
        "BIZMSG_BILLING_AUTHORIZATION_TIMEOUT_SECONDS", DEFAULT_AUTHORIZATION_TIMEOUT_SECONDS
    )
    interval = settings.env_float("BIZMSG_BILLING_SWEEP_INTERVAL_SECONDS", 30.0)
    # Platform revenue accounts per currency. One row that every charge updates caps
    # PostgreSQL at roughly one charge per commit round trip; with N the charges of
    # different payers spread over N rows. Each is an ordinary revenue account (owner
    # "platform"): the platform's revenue is their sum. SQLite serialises writers anyway.
    shards = settings.env_int("BIZMSG_BILLING_REVENUE_SHARDS", DEFAULT_REVENUE_SHARDS)
    if not 1 <= shards <= MAX_REVENUE_SHARDS:
        raise ValueError(f"BIZMSG_BILLING_REVENUE_SHARDS must be 1..{MAX_REVENUE_SHARDS}")

    async def sweep() -> None:
        await sweep_expired(runtime.db, runtime.clock)

    runtime.every(interval, sweep, "billing-expiry-sweep")
    return BillingServicer(
        runtime.db, runtime.clock, timedelta(seconds=timeout), revenue_shards=shards
    )


DEFINITION = ServiceDefinition(
    name="billing",
    service_name="bizmsg.billing.v1.BillingService",
    add_servicer=billing_pb2_grpc.add_BillingServiceServicer_to_server,
    build=build,
    migrations="billing_svc:migrations",
)
