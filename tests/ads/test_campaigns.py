"""Campaign management: CRUD, field masks, idempotency, bad input, ownership."""

from __future__ import annotations

import grpc
from google.protobuf import field_mask_pb2

from bizmsg.ads.v1 import ads_pb2 as pb
from tests.ads.support import ADMIN, Stack, bad_fields, eur, fails, rid

ADV = "advertiser:adv1"


def test_create_get_list_update_pause_resume(stack: Stack) -> None:
    acc = stack.wallet("adv1", 0)
    created = [stack.create("adv1", acc, display_name=f"c{i}") for i in range(3)]
    c = created[0]
    assert c.status == pb.CAMPAIGN_STATUS_ACTIVE and c.spend.amount_micros == 0
    assert stack.get(c.campaign_id, ADV) == c

    # Pages of two, newest first, then the rest.
    first = stack.call(ADV, "ListCampaigns", pb.ListCampaignsRequest(page_size=2))
    assert [x.display_name for x in first.campaigns] == ["c2", "c1"]
    second = stack.call(
        ADV,
        "ListCampaigns",
        pb.ListCampaignsRequest(page_size=2, page_token=first.next_page_token),
    )
    assert [x.display_name for x in second.campaigns] == ["c0"] and not second.next_page_token

    patch = pb.Campaign(
        campaign_id=c.campaign_id,
        bid=eur(3_000_000),
        targeting=pb.Targeting(countries=["FR", "BE"]),
        display_name="ignored: not in the mask",
    )
    mask = field_mask_pb2.FieldMask(paths=["bid", "targeting.countries"])
    updated = stack.call(
        ADV,
        "UpdateCampaign",
        pb.UpdateCampaignRequest(request_id=rid(), campaign=patch, update_mask=mask),
    ).campaign
    assert updated.bid.amount_micros == 3_000_000
    assert list(updated.targeting.countries) == ["FR", "BE"]
    assert list(updated.targeting.languages) == ["de"]  # untouched sibling
    assert updated.display_name == "c0"

    paused = stack.call(
        ADV, "PauseCampaign", pb.PauseCampaignRequest(request_id=rid(), campaign_id=c.campaign_id)
    ).campaign
    assert paused.status == pb.CAMPAIGN_STATUS_PAUSED
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "CAMPAIGN_STATUS_UNCHANGED"):
        stack.call(
            ADV,
            "PauseCampaign",
            pb.PauseCampaignRequest(request_id=rid(), campaign_id=c.campaign_id),
        )
    resumed = stack.call(
        ADV,
        "ResumeCampaign",
        pb.ResumeCampaignRequest(request_id=rid(), campaign_id=c.campaign_id),
    ).campaign
    assert resumed.status == pb.CAMPAIGN_STATUS_ACTIVE


def test_create_is_idempotent_by_request_id(stack: Stack) -> None:
    acc = stack.wallet("adv1", 0)
    req = pb.CreateCampaignRequest(request_id=rid(), campaign=stack.campaign_msg("adv1", acc))
    req.campaign.start_time.FromDatetime(stack.clock.now())
    a = stack.call(ADV, "CreateCampaign", req).campaign
    b = stack.call(ADV, "CreateCampaign", req).campaign
    assert a == b
    other = pb.CreateCampaignRequest()
    other.CopyFrom(req)
    other.campaign.display_name = "another"
    with fails(grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"):
        stack.call(ADV, "CreateCampaign", other)
    listed = stack.call(ADV, "ListCampaigns", pb.ListCampaignsRequest()).campaigns
    assert [x.campaign_id for x in listed] == [a.campaign_id]


def test_bad_campaigns_are_refused_field_by_field_and_change_nothing(stack: Stack) -> None:
    acc = stack.wallet("adv1", 0)
    start = stack.clock.now()
    bad = stack.campaign_msg(
        "adv1",
        acc,
        targeting=pb.Targeting(countries=[], languages=["German"], interests=["Bad Word"]),
        bid=eur(-5),
        daily_budget=eur(1_000_000),
        frequency_cap=pb.FrequencyCap(max_impressions=3, period_days=0),
    )
    bad.start_time.FromDatetime(start)
    bad.end_time.FromDatetime(start.replace(year=2025))
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT") as got:
        stack.call(ADV, "CreateCampaign", pb.CreateCampaignRequest(request_id=rid(), campaign=bad))
    assert bad_fields(got) >= {
        "campaign.targeting.countries",
        "campaign.targeting.languages[0]",
        "campaign.targeting.interests[0]",
        "campaign.bid.amount_micros",
        "campaign.end_time",
        "campaign.frequency_cap.period_days",
    }
    # Budgets below one event's price: a CPC bid of 0.50 with a 0.10 daily budget; and a
    # CPM bid that is not a whole micro per impression.
    cheap = stack.campaign_msg(
        "adv1", acc, bid_type=pb.BID_TYPE_CPC, bid=eur(500_000), daily_budget=eur(100_000)
    )
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        stack.call(
            ADV, "CreateCampaign", pb.CreateCampaignRequest(request_id=rid(), campaign=cheap)
        )
    assert bad_fields(got) == {"campaign.daily_budget.amount_micros"}
    odd = stack.campaign_msg("adv1", acc, bid=eur(1_500_500))
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        stack.call(ADV, "CreateCampaign", pb.CreateCampaignRequest(request_id=rid(), campaign=odd))
    assert bad_fields(got) == {"campaign.bid.amount_micros"}
    usd = stack.campaign_msg("adv1", acc)
    usd.bid.currency_code = "USD"
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        stack.call(ADV, "CreateCampaign", pb.CreateCampaignRequest(request_id=rid(), campaign=usd))
    assert bad_fields(got) == {"campaign.bid.currency_code"}
    assert not stack.call(ADMIN, "ListCampaigns", pb.ListCampaignsRequest()).campaigns


def test_bad_updates_are_refused_and_change_nothing(stack: Stack) -> None:
    acc = stack.wallet("adv1", 0)
    c = stack.create("adv1", acc)

    def update(patch: pb.Campaign, *paths: str) -> None:
        patch.campaign_id = c.campaign_id
        stack.call(
            ADV,
            "UpdateCampaign",
            pb.UpdateCampaignRequest(
                request_id=rid(),
                campaign=patch,
                update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
            ),
        )

    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        update(pb.Campaign(advertiser_id="adv2"), "advertiser_id", "no_such_field")
    assert bad_fields(got) == {"update_mask.paths[0]", "update_mask.paths[1]"}
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        update(pb.Campaign(bid=eur(-1)), "bid")
    assert bad_fields(got) == {"campaign.bid.amount_micros"}
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        update(pb.Campaign(targeting=pb.Targeting()), "targeting.countries")
    assert bad_fields(got) == {"campaign.targeting.countries"}
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as got:
        update(pb.Campaign(), *[])
    assert bad_fields(got) == {"update_mask"}
    assert stack.get(c.campaign_id) == c


def test_advertisers_touch_only_their_own_campaigns_and_wallets(stack: Stack) -> None:
    mine = stack.wallet("adv1", 0)
    theirs = stack.wallet("adv2", 0)
    c = stack.create("adv1", mine)
    other = "advertiser:adv2"
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_CAMPAIGN_OWNER"):
        stack.get(c.campaign_id, other)
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_CAMPAIGN_OWNER"):
        stack.call(
            other,
            "PauseCampaign",
            pb.PauseCampaignRequest(request_id=rid(), campaign_id=c.campaign_id),
        )
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_CAMPAIGN_OWNER"):
        stack.call(
            other,
            "UpdateCampaign",
            pb.UpdateCampaignRequest(
                request_id=rid(),
                campaign=pb.Campaign(campaign_id=c.campaign_id, display_name="mine now"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            ),
        )
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_CAMPAIGN_OWNER"):
        stack.call(other, "GetCampaignStats", pb.GetCampaignStatsRequest(campaign_id=c.campaign_id))
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_CAMPAIGN_OWNER"):
        stack.call(other, "ListCampaigns", pb.ListCampaignsRequest(advertiser_id="adv1"))
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_ACCOUNT_OWNER"):
        stack.create("adv2", mine)  # someone else's wallet
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_CAMPAIGN_OWNER"):
        stack.call(
            other,
            "CreateCampaign",
            pb.CreateCampaignRequest(request_id=rid(), campaign=stack.campaign_msg("adv1", theirs)),
        )
    with fails(grpc.StatusCode.PERMISSION_DENIED, "NOT_AN_ADVERTISER"):
        stack.call("user:alice", "ListCampaigns", pb.ListCampaignsRequest())
    with fails(grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND"):
        stack.get("no-such-campaign")
    assert stack.get(c.campaign_id) == c
