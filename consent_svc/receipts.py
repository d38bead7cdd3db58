"""Consent receipts with the Kantara Initiative Consent Receipt v1.1 fields, signed with Ed25519.

The receipt is canonical JSON (sorted keys, no spaces) and the signature covers those exact
bytes, so anyone with the public key from GetReceiptKey verifies it offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bizmsg.consent.v1 import consent_pb2 as pb
from consent_svc import categories
from consent_svc.crypto import ReceiptSigner

VERSION = "KI-CR-v1.1.0"
_METHODS = {
    pb.COLLECTION_METHOD_WEB_FORM: "web form",
    pb.COLLECTION_METHOD_IN_CHAT: "in chat",
    pb.COLLECTION_METHOD_AD_CLICK: "ad click",
    pb.COLLECTION_METHOD_API: "api",
}


@dataclass(frozen=True)
class ReceiptFacts:
    receipt_id: str
    consent_id: str
    consent_version: int
    person_id: str
    business_id: str
    category_bits: int
    collection_method: int
    collection_time: datetime
    expire_time: datetime | None
    notice: dict[str, str]
    collection_reference: str


def receipt_document(f: ReceiptFacts, key_id: str) -> dict[str, Any]:
    termination = (
        f"expires {f.expire_time.isoformat()}" if f.expire_time else "until withdrawn by the person"
    )
    purposes = [
        {
            "purpose": f"{name.lower()} messages from {f.business_id}",
            "purposeCategory": [name.lower()],
            "consentType": "EXPLICIT",
            "piiCategory": ["messaging identifier"],
            "primaryPurpose": True,
            "termination": termination,
            "thirdPartyDisclosure": False,
        }
        for name in categories.names(f.category_bits)
    ]
    return {
        "version": VERSION,
        "jurisdiction": "EU",
        "consentTimestamp": int(f.collection_time.timestamp()),
        "collectionMethod": _METHODS[pb.CollectionMethod.ValueType(f.collection_method)],
        "consentReceiptID": f.receipt_id,
        "publicKey": key_id,
        "language": f.notice.get("locale", ""),
        "piiPrincipalId": f.person_id,
        "piiControllers": [{"piiController": f.business_id, "onBehalf": False}],
        "policyUrl": f.notice.get("policy_url", ""),
        "services": [{"service": "business messaging", "purposes": purposes}],
        "sensitive": False,
        "spiCat": [],
        # Extensions: what ties the receipt to this service's record and notice.
        "consentId": f.consent_id,
        "consentVersion": f.consent_version,
        "notice": f.notice,
        "collectionReference": f.collection_reference,
    }


def sign_receipt(f: ReceiptFacts, signer: ReceiptSigner) -> pb.ConsentReceipt:
    doc = receipt_document(f, signer.key_id)
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return pb.ConsentReceipt(
        receipt_json=raw, signature=signer.sign(raw), key_id=signer.key_id, receipt_id=f.receipt_id
    )
