"""Campaign management: who may touch which campaign, and the changes themselves."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from ads_svc import store
from ads_svc.campaign_rules import apply_update, validate_campaign
from ads_svc.convert import campaign_to_proto, campaign_values
from ads_svc.models import CampaignRow
from bizmsg.ads.v1 import ads_pb2
from bizmsg.kit.auth import Principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import FailedPrecondition, NotFound, PermissionDenied
from bizmsg.kit.ids import new_id
from bizmsg.kit.validation import Validator


def may_manage(who: Principal, advertiser_id: str) -> bool:
    return who.is_admin or (who.kind == "advertiser" and who.id == advertiser_id)


def not_found(campaign_id: str) -> NotFound:
    return NotFound(
        "CAMPAIGN_NOT_FOUND",
        "no such campaign",
        resource_type="bizmsg.ads.v1.Campaign",
        resource_name=campaign_id,
    )


async def load_owned(
    session: AsyncSession, who: Principal, campaign_id: str, *, lock: bool = False
) -> CampaignRow:
    row = await store.get_campaign(session, campaign_id, lock=lock)
    if row is None:
        raise not_found(campaign_id)
    if not may_manage(who, row.advertiser_id):
        raise PermissionDenied("NOT_CAMPAIGN_OWNER", "the campaign belongs to another advertiser")
    return row


async def create(
    session: AsyncSession, clock: Clock, campaign: ads_pb2.Campaign
) -> ads_pb2.Campaign:
    """Store a validated campaign as active."""
    now = clock.now()
    row = CampaignRow(
        id=new_id(),
        **campaign_values(campaign),
        status=ads_pb2.CAMPAIGN_STATUS_ACTIVE,
        spend_micros=0,
        spend_day="",
        spend_day_micros=0,
        impressions=0,
        clicks=0,
        unfunded_until=None,
        create_time=now,
        update_time=now,
    )
    await store.insert_campaign(
        session, row, list(campaign.targeting.countries), list(campaign.targeting.languages)
    )
    return campaign_to_proto(row)


async def update(
    session: AsyncSession,
    clock: Clock,
    who: Principal,
    request: ads_pb2.UpdateCampaignRequest,
    currency: str,
) -> ads_pb2.Campaign:
    row = await load_owned(session, who, request.campaign.campaign_id, lock=True)
    v = Validator()
    merged = apply_update(v, campaign_to_proto(row), request.campaign, request.update_mask)
    v.raise_if_any()
    validate_campaign(v, merged, currency=currency, spent_micros=row.spend_micros)
    v.raise_if_any()
    for key, value in campaign_values(merged).items():
        setattr(row, key, value)
    row.update_time = clock.now()
    await session.flush()
    await store.replace_targets(
        session, row.id, list(merged.targeting.countries), list(merged.targeting.languages)
    )
    return campaign_to_proto(row)


async def set_status(
    session: AsyncSession, clock: Clock, who: Principal, campaign_id: str, status: int
) -> ads_pb2.Campaign:
    row = await load_owned(session, who, campaign_id, lock=True)
    if row.status == status:
        name = ads_pb2.CampaignStatus.Name(status)  # type: ignore[arg-type]
        raise FailedPrecondition(
            "CAMPAIGN_STATUS_UNCHANGED",
            f"the campaign is already {name}",
            violations=[("STATUS", f"campaigns/{campaign_id}", f"already {name}")],
        )
    row.status = status
    row.update_time = clock.now()
    await session.flush()
    await store.refresh_rank(await session.connection(), row.id)  # out of the read or back
    return campaign_to_proto(row)
