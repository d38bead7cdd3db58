"""The gRPC servicer: validate, authorize, then hand over to the ledger. Thin on purpose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from bizmsg.consent.v1 import consent_pb2 as pb
from bizmsg.consent.v1 import consent_pb2_grpc
from bizmsg.kit import multiplex
from bizmsg.kit.idempotency import Idempotency
from bizmsg.kit.validation import PageToken, Validator, page_size
from consent_svc import access, person_data, validation
from consent_svc.ledger import Ledger, window_pb
from consent_svc.replay import PersonReplay


def _page(token: str, size: int, key: str, default: Any) -> tuple[Any, int]:
    v = Validator()
    limit = page_size(v, size)
    state = PageToken.decode(v, "page_token", token)
    after = state.get(key, default)
    if not isinstance(after, type(default)):
        v.add("page_token", "is not a page token this service issued")
    v.raise_if_any()
    return after, limit


class ConsentServicer(consent_pb2_grpc.ConsentServiceServicer):
    def __init__(self, ledger: Ledger, idempotency: Idempotency, replay: PersonReplay) -> None:
        self.ledger = ledger
        # A person's own calls: the kit's table, keyed by their principal (erasure deletes by it).
        self.idem = idempotency
        # service:delivery's calls about a person: keyed to the person's hash (see replay.py).
        self.replay = replay

    async def GrantConsent(self, request: pb.GrantConsentRequest, context: Any) -> Any:
        validation.grant(request, self.ledger.clock.now())
        access.own_data(request.person_id, "grant consent for this person")
        return await self.idem.run(
            self.ledger.db,
            "GrantConsent",
            request,
            pb.GrantConsentResponse,
            lambda s: self.ledger.grant(s, request),
        )

    async def RevokeConsent(self, request: pb.RevokeConsentRequest, context: Any) -> Any:
        validation.revoke(request)
        access.own_data(request.person_id, "revoke consent for this person")
        return await self.idem.run(
            self.ledger.db,
            "RevokeConsent",
            request,
            pb.RevokeConsentResponse,
            lambda s: self.ledger.revoke(s, request),
        )

    async def BlockBusiness(self, request: pb.BlockBusinessRequest, context: Any) -> Any:
        validation.person_business_request(
            request.request_id, request.person_id, request.business_id
        )
        access.own_data(request.person_id, "block for this person")
        return await self.idem.run(
            self.ledger.db,
            "BlockBusiness",
            request,
            pb.BlockBusinessResponse,
            lambda s: self.ledger.block(s, request),
        )

    async def UnblockBusiness(self, request: pb.UnblockBusinessRequest, context: Any) -> Any:
        validation.person_business_request(
            request.request_id, request.person_id, request.business_id
        )
        access.own_data(request.person_id, "unblock for this person")
        return await self.idem.run(
            self.ledger.db,
            "UnblockBusiness",
            request,
            pb.UnblockBusinessResponse,
            lambda s: self.ledger.unblock(s, request),
        )

    async def CheckConsent(self, request: pb.CheckConsentRequest, context: Any) -> Any:
        validation.check(request)
        access.check_consent(request.business_id)
        d = await self.ledger.check(request.business_id, request.person_id, request.category)
        return pb.CheckConsentResponse(
            allowed=d.allowed,
            reason=d.reason,  # type: ignore[arg-type]
            window=window_pb(d.window.kind, d.window.expire_time),
            consent_id=d.consent_id,
            consent_version=d.consent_version,
            free_entry_pending=d.window.free_entry_pending,
        )

    def CheckConsentStream(
        self, request_iterator: AsyncIterator[pb.CheckConsentStreamRequest], context: Any
    ) -> AsyncIterator[pb.CheckConsentStreamResponse]:
        # Each item is a CheckConsent, run by the method above (delivery's hot path).
        return multiplex.serve(
            request_iterator,
            context,
            "CheckConsent",
            self.CheckConsent,
            pb.CheckConsentStreamResponse,
        )

    async def RecordUserMessage(self, request: pb.RecordUserMessageRequest, context: Any) -> Any:
        validation.user_message(request)
        access.delivery_only("record user messages")
        return await self.replay.run(
            self.ledger.db,
            "RecordUserMessage",
            request,
            self.ledger.person_hash(request.person_id),
            pb.RecordUserMessageResponse,
            lambda s: self.ledger.record_user_message(s, request),
        )

    async def RecordBusinessReply(
        self, request: pb.RecordBusinessReplyRequest, context: Any
    ) -> Any:
        validation.person_business_request(
            request.request_id, request.person_id, request.business_id
        )
        access.delivery_only("record business replies")
        return await self.replay.run(
            self.ledger.db,
            "RecordBusinessReply",
            request,
            self.ledger.person_hash(request.person_id),
            pb.RecordBusinessReplyResponse,
            lambda s: self.ledger.record_business_reply(s, request),
        )

    async def ListConsents(self, request: pb.ListConsentsRequest, context: Any) -> Any:
        validation.person_only(request.person_id)
        after, limit = _page(request.page_token, request.page_size, "after", "")
        access.own_data(request.person_id, "list this person's consents")
        records, more = await person_data.list_consents(
            self.ledger, request.person_id, after, limit
        )
        token = PageToken.encode({"after": more}) if more is not None else ""
        return pb.ListConsentsResponse(consents=records, next_page_token=token)

    async def GetConsentHistory(self, request: pb.GetConsentHistoryRequest, context: Any) -> Any:
        validation.person_only(request.person_id)
        after, limit = _page(request.page_token, request.page_size, "after", 0)
        access.own_data(request.person_id, "read this person's history")
        history_id, events, more = await person_data.consent_history(
            self.ledger, request.person_id, after, limit
        )
        token = PageToken.encode({"after": more}) if more is not None else ""
        return pb.GetConsentHistoryResponse(
            events=events, next_page_token=token, history_id=history_id
        )

    async def VerifyConsentHistory(
        self, request: pb.VerifyConsentHistoryRequest, context: Any
    ) -> Any:
        validation.verify(request)
        access.verify_history(request.person_id)
        return await person_data.verify_history(
            self.ledger, person_id=request.person_id, history_id=request.history_id
        )

    async def ExportPersonData(self, request: pb.ExportPersonDataRequest, context: Any) -> Any:
        validation.person_only(request.person_id)
        access.own_data_or_admin(request.person_id, "export this person's data")
        data = await person_data.export(self.ledger, request.person_id)
        return pb.ExportPersonDataResponse(content_type="application/json", data=data)

    async def ErasePerson(self, request: pb.ErasePersonRequest, context: Any) -> Any:
        validation.erase(request)
        caller = access.own_data_or_admin(request.person_id, "erase this person")
        return await person_data.erase(self.ledger, str(caller), request)

    async def SetAdPreferences(self, request: pb.SetAdPreferencesRequest, context: Any) -> Any:
        paths = validation.ad_preferences(request)
        access.own_data(request.preferences.person_id, "set this person's ad preferences")
        return await self.idem.run(
            self.ledger.db,
            "SetAdPreferences",
            request,
            pb.SetAdPreferencesResponse,
            lambda s: person_data.set_ad_preferences(self.ledger, s, request, paths),
        )

    async def GetAdPreferences(self, request: pb.GetAdPreferencesRequest, context: Any) -> Any:
        validation.person_only(request.person_id)
        for_ads = access.read_ad_preferences(request.person_id)
        prefs = await person_data.get_ad_preferences(
            self.ledger, request.person_id, for_ads=for_ads
        )
        return pb.GetAdPreferencesResponse(preferences=prefs)

    async def GetReceiptKey(self, request: pb.GetReceiptKeyRequest, context: Any) -> Any:
        # A public key: any authenticated caller may have it.
        signer = self.ledger.signer
        return pb.GetReceiptKeyResponse(
            algorithm="Ed25519",
            public_key=signer.public_bytes,
            key_id=signer.key_id,
            public_key_pem=signer.public_pem,
        )
