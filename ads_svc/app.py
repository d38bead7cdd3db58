"""The ads service definition and build(): settings, dependency clients, jobs, servicer."""

from __future__ import annotations

import random

from ads_svc import store
from ads_svc.clicks import Clicks
from ads_svc.confirmations import Confirmations
from ads_svc.models import IDEMPOTENCY
from ads_svc.partners import Billing, Consent
from ads_svc.rpc import AdsServicer
from ads_svc.serving import Server
from ads_svc.settings import AdsSettings
from ads_svc.settlement import Settlement
from bizmsg.ads.v1 import ads_pb2_grpc
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.server import Runtime, ServiceDefinition

# How often ended campaigns leave the candidate read's index walk (store.retire_ended); until
# then the read filters them out as it walks.
RETIRE_INTERVAL_SECONDS = 60.0


async def build(runtime: Runtime) -> AdsServicer:
    settings = AdsSettings.load(runtime.settings)
    idem = Idempotency(IDEMPOTENCY, runtime.clock)
    consent = Consent(runtime.channel("consent"))
    billing = Billing.open(runtime)
    # Pacing's coin only; nothing secret depends on it.
    rng = random.Random()
    db = runtime.db
    confirmations = Confirmations(db)
    server = Server(db, runtime.clock, idem, consent, billing, settings, rng, confirmations)
    clicks = Clicks(db, runtime.clock, idem, billing, settings.unfunded_backoff_seconds)
    settlement = Settlement(
        db,
        runtime.clock,
        billing,
        settings.settle_after_seconds,
        settings.unfunded_backoff_seconds,
    )

    async def settle() -> None:
        await settlement.run_once()

    async def confirm() -> None:
        await confirmations.flush()

    runtime.every(settings.confirm_interval_seconds, confirm, "ads-confirmations")
    runtime.every(settings.settle_interval_seconds, settle, "ads-settlement")

    async def retire_ended() -> None:
        async with db.write() as session:
            await store.retire_ended(await session.connection(), runtime.clock.now())

    runtime.every(RETIRE_INTERVAL_SECONDS, retire_ended, "ads-retire-ended")
    # Jobs stop before shutdown hooks run: write the last noted charges then.
    runtime.on_shutdown(confirm)
    return AdsServicer(runtime.db, runtime.clock, idem, settings, server, clicks, billing)


DEFINITION = ServiceDefinition(
    name="ads",
    service_name="bizmsg.ads.v1.AdsService",
    add_servicer=ads_pb2_grpc.add_AdsServiceServicer_to_server,
    build=build,
    migrations="ads_svc:migrations",
    dependencies=("consent", "billing"),
)
