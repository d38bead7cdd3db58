"""What the bench measures: one pre-encoded request per scenario, who sends it, and where.

Markers (shim.py) make each call distinct: REQUEST_MARKER in request_id gives every call a fresh
id, PICK_MARKER in a person id spreads calls over the seeded people. A scenario's `verify_path`
is the method whose outcome codes are counted in the answering service's log.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from google.protobuf.message import Message

from bizmsg.ads.v1 import ads_pb2
from bizmsg.bench.seed import COUNTRY, DEVICE, LANGUAGE, business_id
from bizmsg.bench.shim import PICK_MARKER, REQUEST_MARKER
from bizmsg.billing.v1 import billing_pb2
from bizmsg.common.v1 import common_pb2
from bizmsg.consent.v1 import consent_pb2
from bizmsg.delivery.v1 import delivery_pb2

SEND_PATH = "/bizmsg.delivery.v1.DeliveryService/SendMessage"
CHECK_PATH = "/bizmsg.consent.v1.ConsentService/CheckConsent"
AUTHORIZE_PATH = "/bizmsg.billing.v1.BillingService/AuthorizeCharge"
SERVE_PATH = "/bizmsg.ads.v1.AdsService/ServeAd"
ENVELOPE_BYTES = 256  # a short text message after Double Ratchet + envelope framing

PERSON = "p" + PICK_MARKER.decode()


def request_id(tag: str) -> str:
    return f"{tag}-{REQUEST_MARKER.decode()}"


def send_message(tag: str) -> bytes:
    return delivery_pb2.SendMessageRequest(
        request_id=request_id(tag),
        recipient=f"user:{PERSON}",
        category=common_pb2.CATEGORY_MARKETING,
        envelopes=[
            delivery_pb2.DeviceEnvelope(device_id=DEVICE, ciphertext=os.urandom(ENVELOPE_BYTES))
        ],
        sender_device_id="api",
    ).SerializeToString()


def check_consent(tag: str) -> bytes:
    return consent_pb2.CheckConsentRequest(
        business_id=business_id(0), person_id=PERSON, category=common_pb2.CATEGORY_MARKETING
    ).SerializeToString()


def authorize_charge(tag: str) -> bytes:
    return billing_pb2.AuthorizeChargeRequest(
        request_id=request_id(tag),
        business_id=business_id(0),
        recipient_country=COUNTRY,
        category=common_pb2.CATEGORY_MARKETING,
        window=common_pb2.WINDOW_KIND_NONE,
    ).SerializeToString()


def serve_ad(tag: str) -> bytes:
    return ads_pb2.ServeAdRequest(
        request_id=request_id(tag),
        person_id=PERSON,
        placement=ads_pb2.PLACEMENT_STATUS,
        context=ads_pb2.AdContext(country=COUNTRY, language=LANGUAGE),
    ).SerializeToString()


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    target: str  # "null" (the null front) or a service name
    path: str
    principal: str
    message: Callable[[str], bytes]
    response_type: type[Message] | None  # for the sample call; None: raw bytes (null pipeline)
    pipeline: bool  # swept over every concurrency level and charted
    stored_in: str = ""  # a table of the target whose new rows are the calls that took effect


SCENARIOS = (
    Scenario(
        "null",
        "null pipeline (3 empty gRPC hops)",
        "null",
        SEND_PATH,
        f"business:{business_id(0)}",
        send_message,
        None,
        True,
    ),
    Scenario(
        "kit",
        "kit pipeline (the same 3 hops through bizmsg's framework, empty handlers)",
        "kit",
        SEND_PATH,
        f"business:{business_id(0)}",
        send_message,
        delivery_pb2.SendMessageResponse,
        True,
    ),
    Scenario(
        "send",
        "SendMessage end to end",
        "delivery",
        SEND_PATH,
        f"business:{business_id(0)}",
        send_message,
        delivery_pb2.SendMessageResponse,
        True,
        "messages",
    ),
    Scenario(
        "check",
        "CheckConsent alone",
        "consent",
        CHECK_PATH,
        "service:delivery",
        check_consent,
        consent_pb2.CheckConsentResponse,
        False,
    ),
    Scenario(
        "authorize",
        "AuthorizeCharge alone",
        "billing",
        AUTHORIZE_PATH,
        "service:delivery",
        authorize_charge,
        billing_pb2.AuthorizeChargeResponse,
        False,
    ),
    Scenario(
        "serve",
        "ServeAd alone",
        "ads",
        SERVE_PATH,
        "admin",
        serve_ad,
        ads_pb2.ServeAdResponse,
        False,
    ),
)
BY_KEY = {s.key: s for s in SCENARIOS}


def stamp(message: bytes, number: int, people: int) -> bytes:
    """What the shim does to one body, for sample calls made from Python."""
    out = message.replace(REQUEST_MARKER, f"{number:012d}".encode(), 1)
    return out.replace(PICK_MARKER, f"{number % max(1, people):06d}".encode(), 1)
