"""The delivery service: key directory and end-to-end encrypted relay (see DESIGN.md).

Configuration (environment):
  BIZMSG_DELIVERY_PAIR_LIMIT_PER_MINUTE     messages a business may send one person a minute (10)
  BIZMSG_DELIVERY_MAX_MESSAGES_PER_SECOND   the most messages per second admin may allow one
                                            business (1000)
  BIZMSG_DELIVERY_BUNDLE_LIMIT_PER_MINUTE   bundle fetches per requester and target a minute (60)
  BIZMSG_DELIVERY_BUNDLE_LIMIT_PER_REQUESTER  bundle fetches per requester a minute (1000)
  BIZMSG_DELIVERY_POLL_INTERVAL             seconds between database polls of open streams (1.0)
  BIZMSG_DELIVERY_RELAY_INTERVAL            seconds between outbox sweeps; commits that queue
                                            outbox work wake the relay at once (1.0)
  BIZMSG_DELIVERY_SWEEP_INTERVAL            seconds between expiry sweeps (1.0)
"""

from __future__ import annotations

from bizmsg.delivery.v1 import delivery_pb2_grpc
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.server import Runtime, ServiceDefinition
from delivery_svc.dependencies import Dependencies
from delivery_svc.keydir import BundleLimits, KeyDirectory
from delivery_svc.limits import LimitSettings
from delivery_svc.mailbox import Mailbox
from delivery_svc.models import idempotency_keys
from delivery_svc.notify import Notifier
from delivery_svc.policy import MAX_MESSAGES_PER_SECOND
from delivery_svc.relay import Relay
from delivery_svc.rpc import DeliveryServicer
from delivery_svc.sending import Sending


async def build(runtime: Runtime) -> DeliveryServicer:
    s = runtime.settings
    db, clock = runtime.db, runtime.clock
    idem = Idempotency(idempotency_keys, clock)
    deps = Dependencies(runtime)
    notifier = Notifier()
    keys = KeyDirectory(
        db,
        clock,
        idem,
        deps,
        BundleLimits(
            per_target_per_minute=s.env_int("BIZMSG_DELIVERY_BUNDLE_LIMIT_PER_MINUTE", 60),
            per_requester_per_minute=s.env_int("BIZMSG_DELIVERY_BUNDLE_LIMIT_PER_REQUESTER", 1000),
        ),
        notifier,
    )
    sending = Sending(
        db,
        clock,
        idem,
        deps,
        notifier,
        LimitSettings(
            pair_per_minute=s.env_int("BIZMSG_DELIVERY_PAIR_LIMIT_PER_MINUTE", 10),
            max_messages_per_second=s.env_int(
                "BIZMSG_DELIVERY_MAX_MESSAGES_PER_SECOND", MAX_MESSAGES_PER_SECOND
            ),
        ),
    )
    mailbox = Mailbox(db, clock, notifier, s.env_float("BIZMSG_DELIVERY_POLL_INTERVAL", 1.0))
    relay = Relay(db, clock, deps, notifier, s.env_float("BIZMSG_DELIVERY_RELAY_INTERVAL", 1.0))

    async def expire_due() -> None:
        await relay.expire_due()

    # The relay job waits for a wake-up or its interval itself (Relay.run).
    runtime.every(0, relay.run, "outbox-relay")
    runtime.every(s.env_float("BIZMSG_DELIVERY_SWEEP_INTERVAL", 1.0), expire_due, "expiry-sweep")
    return DeliveryServicer(db, clock, idem, keys, sending, mailbox, notifier)


DEFINITION = ServiceDefinition(
    name="delivery",
    service_name="bizmsg.delivery.v1.DeliveryService",
    add_servicer=delivery_pb2_grpc.add_DeliveryServiceServicer_to_server,
    build=build,
    migrations="delivery_svc:migrations",
    dependencies=("consent", "billing"),
)
