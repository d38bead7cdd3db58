"""The key directory: public keys only. Publishing checks the signed prekey's signature;
fetching hands each one-time prekey out once, and a business sees a person's keys only
when consent allows it to message them (without consent it cannot even encrypt)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from bizmsg.common.v1 import common_pb2
from bizmsg.delivery.v1 import delivery_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import FailedPrecondition, NotFound, ResourceExhausted
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.storage import Database
from delivery_svc import store
from delivery_svc.dependencies import Dependencies
from delivery_svc.device_reset import fail_lost_messages
from delivery_svc.notify import OUTBOX, Notifier, status_key
from delivery_svc.policy import (
    MAX_PRE_KEYS_PER_DEVICE,
    consent_reason,
    minute_window,
    strongest_refusal,
)

ALL_CATEGORIES = (
    common_pb2.CATEGORY_MARKETING,
    common_pb2.CATEGORY_UTILITY,
    common_pb2.CATEGORY_AUTHENTICATION,
    common_pb2.CATEGORY_SERVICE,
)


@dataclass(frozen=True)
class BundleLimits:
    # Bundle fetches per minute by one requester for one target, and by one requester overall.
    per_target_per_minute: int = 60
    per_requester_per_minute: int = 1000


class KeyDirectory:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        idem: Idempotency,
        deps: Dependencies,
        limits: BundleLimits,
        notifier: Notifier,
    ) -> None:
        self.notifier = notifier
        self.db = db
        self.clock = clock
        self.idem = idem
        self.deps = deps
        self.limits = limits

    async def publish(
        self, owner: Principal, request: delivery_pb2.PublishKeysRequest
    ) -> delivery_pb2.PublishKeysResponse:
        changed: set[str] = set()

        async def work(s: AsyncSession) -> delivery_pb2.PublishKeysResponse:
            now = self.clock.now()
            replaced = await store.put_device(
                s,
                str(owner),
                request.device_id,
                request.identity_key,
                request.signed_pre_key.public_key,
                request.signed_pre_key.signature,
                request.country_code,
                now,
            )
            if replaced:
                changed.update(await fail_lost_messages(s, str(owner), request.device_id, now))
            await store.add_pre_keys(s, str(owner), request.device_id, request.one_time_pre_keys)
            count = await store.count_pre_keys(s, str(owner), request.device_id)
            if count > MAX_PRE_KEYS_PER_DEVICE:
                raise ResourceExhausted(
                    "TOO_MANY_PRE_KEYS",
                    f"a device may keep at most {MAX_PRE_KEYS_PER_DEVICE} one-time prekeys",
                    quota_violations=[
                        (f"{owner}/{request.device_id}", f"{MAX_PRE_KEYS_PER_DEVICE} prekeys")
                    ],
                )
            return delivery_pb2.PublishKeysResponse(one_time_pre_key_count=count)

        response = await self.idem.run(
            self.db, "PublishKeys", request, delivery_pb2.PublishKeysResponse, work
        )
        for sender in changed:
            self.notifier.notify(status_key(sender))
        if changed:
            self.notifier.notify(OUTBOX)  # voids of the messages that failed
        return response

    async def count(self, owner: Principal, device_id: str) -> int:
        async with self.db.read() as s:
            if await store.get_device(s, str(owner), device_id) is None:
                raise NotFound(
                    "DEVICE_NOT_FOUND",
                    f"{owner} has no device {device_id!r}",
                    resource_type="device",
                    resource_name=f"{owner}/{device_id}",
                )
            return await store.count_pre_keys(s, str(owner), device_id)

    async def _check_consent(self, business_id: str, person_id: str, category: int) -> None:
        categories = (category,) if category else ALL_CATEGORIES
        decisions = await asyncio.gather(
            *(self.deps.check_consent(business_id, person_id, c) for c in categories)
        )
        if any(d.allowed for d in decisions):
            return
        reason = strongest_refusal([consent_reason(d.reason) for d in decisions])
        raise FailedPrecondition(
            reason,
            f"user:{person_id} does not allow business:{business_id} to message them: {reason}",
            violations=[(reason, f"business:{business_id}->user:{person_id}", "no consent")],
        )

    async def _check_rate(self, s: AsyncSession, caller: Principal, owner: Principal) -> None:
        now = self.clock.now().timestamp()
        window = minute_window(now)
        retry = max(0.001, window + 60 - now)
        pair_key, caller_key = f"bundle:{caller}:{owner}", f"bundles:{caller}"
        if await store.counter(s, pair_key, window) >= self.limits.per_target_per_minute:
            raise ResourceExhausted(
                "BUNDLE_RATE_LIMITED",
                f"at most {self.limits.per_target_per_minute} bundle fetches per minute "
                "for one target",
                quota_violations=[(f"{caller}->{owner}", "bundle fetches per minute")],
                retry_after=retry,
            )
        if await store.counter(s, caller_key, window) >= self.limits.per_requester_per_minute:
            raise ResourceExhausted(
                "BUNDLE_RATE_LIMITED",
                f"at most {self.limits.per_requester_per_minute} bundle fetches per minute",
                quota_violations=[(str(caller), "bundle fetches per minute")],
                retry_after=retry,
            )
        await store.bump_counter(s, pair_key, window)
        await store.bump_counter(s, caller_key, window)

    async def bundles(
        self, caller: Principal, owner: Principal, device_id: str, category: int
    ) -> delivery_pb2.GetPreKeyBundleResponse:
        if caller.kind == "business" and owner.kind == "user":
            await self._check_consent(caller.id, owner.id, category)
        async with self.db.write() as s:
            devices = await store.list_devices(s, str(owner), device_id)
            if not devices:
                raise NotFound(
                    "KEYS_NOT_FOUND",
                    f"{owner} has published no keys"
                    + (f" for device {device_id!r}" if device_id else ""),
                    resource_type="device",
                    resource_name=f"{owner}/{device_id}" if device_id else str(owner),
                )
            await self._check_rate(s, caller, owner)
            out = delivery_pb2.GetPreKeyBundleResponse()
            for d in devices:
                one_time = await store.take_pre_key(s, str(owner), d.device_id)
                out.bundles.append(
                    delivery_pb2.PreKeyBundle(
                        device_id=d.device_id,
                        identity_key=d.identity_key,
                        signed_pre_key=delivery_pb2.SignedPreKey(
                            public_key=d.signed_pre_key, signature=d.signed_pre_key_signature
                        ),
                        one_time_pre_key=one_time or b"",
                    )
                )
            return out
