"""The AdsService servicer: validate, authorize, convert; the rules live elsewhere."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ads_svc import campaigns, pacing, store
from ads_svc.campaign_rules import COUNTRY, LANGUAGE, check_interests, validate_campaign
from ads_svc.clicks import Clicks
from ads_svc.convert import campaign_to_proto
from ads_svc.partners import Billing
from ads_svc.serving import Server
from ads_svc.settings import AdsSettings
from ads_svc.stats import MAX_DAYS, report
from bizmsg.ads.v1 import ads_pb2, ads_pb2_grpc
from bizmsg.kit.auth import Principal, current_principal
from bizmsg.kit.clock import Clock
from bizmsg.kit.errors import PermissionDenied
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.storage import Database
from bizmsg.kit.timeutil import from_timestamp
from bizmsg.kit.validation import (
    PageToken,
    Validator,
    check_enum,
    check_id,
    check_request_id,
    page_size,
)


def _advertiser_or_admin(who: Principal) -> None:
    if not (who.is_admin or who.kind == "advertiser"):
        raise PermissionDenied("NOT_AN_ADVERTISER", "only advertisers manage campaigns")


class AdsServicer(ads_pb2_grpc.AdsServiceServicer):
    def __init__(
        self,
        db: Database,
        clock: Clock,
        idem: Idempotency,
        settings: AdsSettings,
        server: Server,
        clicks: Clicks,
        billing: Billing,
    ) -> None:
        self.billing = billing
        self.db = db
        self.clock = clock
        self.idem = idem
        self.settings = settings
        self.server = server
        self.clicks = clicks

    async def CreateCampaign(
        self, request: ads_pb2.CreateCampaignRequest, context: Any
    ) -> ads_pb2.CreateCampaignResponse:
        who = current_principal()
        _advertiser_or_admin(who)
        campaign = ads_pb2.Campaign()
        campaign.CopyFrom(request.campaign)
        if not campaign.advertiser_id and who.kind == "advertiser":
            campaign.advertiser_id = who.id
        if not campaign.HasField("start_time"):
            campaign.start_time.FromDatetime(self.clock.now())
        v = Validator()
        check_request_id(v, request.request_id)
        v.check(request.HasField("campaign"), "campaign", "is required")
        validate_campaign(v, campaign, currency=self.settings.currency)
        v.raise_if_any()
        if not campaigns.may_manage(who, campaign.advertiser_id):
            raise PermissionDenied("NOT_CAMPAIGN_OWNER", "advertisers create only their own")
        await self.billing.wallet_check(
            campaign.account_id, campaign.advertiser_id, self.settings.currency
        )

        async def work(session: AsyncSession) -> ads_pb2.CreateCampaignResponse:
            created = await campaigns.create(session, self.clock, campaign)
            return ads_pb2.CreateCampaignResponse(campaign=created)

        return await self.idem.run(
            self.db, "CreateCampaign", request, ads_pb2.CreateCampaignResponse, work
        )

    async def GetCampaign(
        self, request: ads_pb2.GetCampaignRequest, context: Any
    ) -> ads_pb2.GetCampaignResponse:
        who = current_principal()
        v = Validator()
        check_id(v, "campaign_id", request.campaign_id)
        v.raise_if_any()
        async with self.db.read() as session:
            row = await campaigns.load_owned(session, who, request.campaign_id)
            return ads_pb2.GetCampaignResponse(campaign=campaign_to_proto(row))

    async def ListCampaigns(
        self, request: ads_pb2.ListCampaignsRequest, context: Any
    ) -> ads_pb2.ListCampaignsResponse:
        who = current_principal()
        _advertiser_or_admin(who)
        v = Validator()
        check_id(v, "advertiser_id", request.advertiser_id, required=False)
        size = page_size(v, request.page_size)
        token = PageToken.decode(v, "page_token", request.page_token)
        advertiser = request.advertiser_id or (who.id if who.kind == "advertiser" else "")
        if token:
            v.check(
                token.get("adv") == advertiser and isinstance(token.get("before"), str),
                "page_token",
                "belongs to another query",
            )
        v.raise_if_any()
        if not who.is_admin and advertiser != who.id:
            raise PermissionDenied("NOT_CAMPAIGN_OWNER", "advertisers list only their own")
        async with self.db.read() as session:
            rows = await store.list_campaigns(
                session, advertiser or None, token.get("before"), size + 1
            )
        resp = ads_pb2.ListCampaignsResponse(campaigns=[campaign_to_proto(r) for r in rows[:size]])
        if len(rows) > size:
            resp.next_page_token = PageToken.encode(
                {"adv": advertiser, "before": rows[size - 1].id}
            )
        return resp

    async def UpdateCampaign(
        self, request: ads_pb2.UpdateCampaignRequest, context: Any
    ) -> ads_pb2.UpdateCampaignResponse:
        who = current_principal()
        _advertiser_or_admin(who)
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "campaign.campaign_id", request.campaign.campaign_id)
        v.raise_if_any()

        async def work(session: AsyncSession) -> ads_pb2.UpdateCampaignResponse:
            updated = await campaigns.update(
                session, self.clock, who, request, self.settings.currency
            )
            return ads_pb2.UpdateCampaignResponse(campaign=updated)

        return await self.idem.run(
            self.db, "UpdateCampaign", request, ads_pb2.UpdateCampaignResponse, work
        )

    async def _set_status(self, method: str, request: Any, status: int, response_type: Any) -> Any:
        who = current_principal()
        _advertiser_or_admin(who)
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "campaign_id", request.campaign_id)
        v.raise_if_any()

        async def work(session: AsyncSession) -> Any:
            changed = await campaigns.set_status(
                session, self.clock, who, request.campaign_id, status
            )
            return response_type(campaign=changed)

        return await self.idem.run(self.db, method, request, response_type, work)

    async def PauseCampaign(
        self, request: ads_pb2.PauseCampaignRequest, context: Any
    ) -> ads_pb2.PauseCampaignResponse:
        return await self._set_status(  # type: ignore[no-any-return]
            "PauseCampaign",
            request,
            ads_pb2.CAMPAIGN_STATUS_PAUSED,
            ads_pb2.PauseCampaignResponse,
        )

    async def ResumeCampaign(
        self, request: ads_pb2.ResumeCampaignRequest, context: Any
    ) -> ads_pb2.ResumeCampaignResponse:
        return await self._set_status(  # type: ignore[no-any-return]
            "ResumeCampaign",
            request,
            ads_pb2.CAMPAIGN_STATUS_ACTIVE,
            ads_pb2.ResumeCampaignResponse,
        )

    async def ServeAd(
        self, request: ads_pb2.ServeAdRequest, context: Any
    ) -> ads_pb2.ServeAdResponse:
        who = current_principal()
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "person_id", request.person_id)
        check_enum(v, "placement", request.placement, ads_pb2.Placement)
        v.check(
            bool(COUNTRY.match(request.context.country)),
            "context.country",
            "must be an ISO 3166-1 alpha-2 code in upper case",
        )
        if request.context.language:
            v.check(
                bool(LANGUAGE.match(request.context.language)),
                "context.language",
                "must be an ISO 639-1 code in lower case",
            )
        check_interests(v, "context.interests", list(request.context.interests))
        v.raise_if_any()
        if not (who.is_admin or (who.kind == "user" and who.id == request.person_id)):
            raise PermissionDenied("NOT_THE_PERSON", "ads are served only to the person asking")
        return await self.server.serve(request)

    async def RecordClick(
        self, request: ads_pb2.RecordClickRequest, context: Any
    ) -> ads_pb2.RecordClickResponse:
        who = current_principal()
        v = Validator()
        check_request_id(v, request.request_id)
        check_id(v, "impression_id", request.impression_id)
        v.raise_if_any()
        if not (who.is_admin or who.kind == "user"):
            raise PermissionDenied("NOT_THE_PERSON", "only the person shown the ad clicks it")
        return await self.clicks.record(who, request)

    async def GetClick(
        self, request: ads_pb2.GetClickRequest, context: Any
    ) -> ads_pb2.GetClickResponse:
        v = Validator()
        check_id(v, "click_id", request.click_id)
        v.raise_if_any()
        return ads_pb2.GetClickResponse(
            click=await self.clicks.get(current_principal(), request.click_id)
        )

    async def GetCampaignStats(
        self, request: ads_pb2.GetCampaignStatsRequest, context: Any
    ) -> ads_pb2.GetCampaignStatsResponse:
        who = current_principal()
        v = Validator()
        check_id(v, "campaign_id", request.campaign_id)
        start = from_timestamp(request.start_time)
        end = from_timestamp(request.end_time)
        if start is not None and end is not None:
            v.check(end >= start, "end_time", "must not be before start_time")
            v.check(
                end - start <= timedelta(days=MAX_DAYS),
                "end_time",
                f"at most {MAX_DAYS} days after start_time",
            )
        v.raise_if_any()
        async with self.db.read() as session:
            row = await campaigns.load_owned(session, who, request.campaign_id)
            first = pacing.day_key(start or row.start_time)
            last = pacing.day_key(end or self.clock.now())
            rows = await store.stats(session, row.id, first, last)
            return report(rows, row.currency_code)
