"""Domain errors and their wire form.

Domain code raises these; the server interceptor turns them into a `google.rpc.Status`
with exactly one `ErrorInfo` (reason, domain `<service>.bizmsg`) plus the detail that fits
(DESIGN.md, rule 3). Nothing here knows about a particular service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status


class DomainError(Exception):
    """An error a caller can act on. Subclasses fix the gRPC code and the detail type."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self, reason: str, message: str, *, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})

    def details(self) -> list[Message]:
        """Details beyond the ErrorInfo; overridden per kind."""
        return []

    def to_status(self, domain: str) -> status_pb2.Status:
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=domain, metadata=self.metadata
        )
        packed = []
        for detail in [info, *self.details()]:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self,
        violations: Sequence[tuple[str, str]],
        message: str = "invalid request",
        reason: str = "INVALID_ARGUMENT",
    ) -> None:
        self.violations = list(violations)
        summary = "; ".join(f"{f}: {d}" for f, d in self.violations[:5])
        super().__init__(reason, f"{message}: {summary}" if summary else message)

    def details(self) -> list[Message]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
        ]


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        violations: Sequence[tuple[str, str, str]] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason, message, metadata=metadata)
        self.violations = list(violations)

    def details(self) -> list[Message]:
        if not self.violations:
            return []
        return [
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type=t, subject=s, description=d
                    )
                    for t, s, d in self.violations
                ]
            )
        ]


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND

    def __init__(
        self, reason: str, message: str, *, resource_type: str = "", resource_name: str = ""
    ) -> None:
        super().__init__(reason, message)
        self.resource_type = resource_type
        self.resource_name = resource_name

    def details(self) -> list[Message]:
        if not self.resource_type:
            return []
        return [
            error_details_pb2.ResourceInfo(
                resource_type=self.resource_type,
                resource_name=self.resource_name,
                description=self.message,
            )
        ]


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(
        self,
        reason: str = "REQUEST_ID_REUSED",
        message: str = "request_id was already used with different parameters",
    ) -> None:
        super().__init__(reason, message)


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED

    def __init__(
        self, reason: str = "PERMISSION_DENIED", message: str = "caller may not do this"
    ) -> None:
        super().__init__(reason, message)


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class Aborted(DomainError):
    code = grpc.StatusCode.ABORTED


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(max(0, int(seconds * 1e9)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        quota_violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(reason, message, metadata=metadata)
        self.quota_violations = list(quota_violations)
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        out: list[Message] = [
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=s, description=d)
                    for s, d in self.quota_violations
                ]
            )
        ]
        if self.retry_after is not None:
            out.append(_retry_info(self.retry_after))
        return out


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, reason: str, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason, message)
        self.retry_after = retry_after

    def details(self) -> list[Message]:
        return [] if self.retry_after is None else [_retry_info(self.retry_after)]


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


_DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.QuotaFailure,
    error_details_pb2.RetryInfo,
    error_details_pb2.ResourceInfo,
)


def status_details(e: grpc.RpcError) -> list[Message]:
    """The unpacked google.rpc details of a failed call (empty when it carried none)."""
    status = rpc_status.from_call(e)  # type: ignore[arg-type]
    if status is None:
        return []
    out: list[Message] = []
    for any_msg in status.details:
        for detail_type in _DETAIL_TYPES:
            if any_msg.Is(detail_type.DESCRIPTOR):
                detail = detail_type()
                any_msg.Unpack(detail)
                out.append(detail)
    return out


def error_info(e: grpc.RpcError) -> tuple[str, dict[str, str]] | None:
    """The ErrorInfo reason and metadata of a failed outgoing call, if it had one."""
    for detail in status_details(e):
        if isinstance(detail, error_details_pb2.ErrorInfo):
            return detail.reason, dict(detail.metadata)
    return None


def internal_status(request_id: str) -> status_pb2.Status:
    """What a caller sees for a bug: no internals, only the id to find it in the logs."""
    info = error_details_pb2.ErrorInfo(
        reason="INTERNAL", domain="bizmsg", metadata={"request_id": request_id}
    )
    any_msg = any_pb2.Any()
    any_msg.Pack(info)
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (request id {request_id})",
        details=[any_msg],
    )
