"""The one error hierarchy of fedgate.

Every error carries the gRPC status code it maps to and a stable ``reason``
string (the ``google.rpc.ErrorInfo`` reason). Handlers raise these; one place
(``fedgate.status``) turns them into ``google.rpc.Status``.

    FedgateError
    ├── InvalidArgument            INVALID_ARGUMENT   (field violations)
    │   ├── DecodeError            malformed or oversized message
    │   └── ConfigError            a process's configuration (names the option)
    ├── AuthenticationError        UNAUTHENTICATED
    │   ├── SignatureInvalid       bad signature, wrong key, wrong domain
    │   ├── UnknownKey             key id not in the registry
    │   ├── KeyNotValid            key outside its validity window or revoked
    │   ├── PeerMismatch           signer is not the TLS peer
    │   └── ResponseBindingError   response bound to another request
    ├── RegistryError              FAILED_PRECONDITION (registry unusable)
    │   └── MemberRefused          unknown, revoked or expired member
    ├── PermissionRefused          PERMISSION_DENIED
    │   ├── PolicyDenied           no Casbin rule allows it
    │   └── RuleViolated           a business rule forbids it
    ├── Replayed                   ALREADY_EXISTS
    ├── InProgress                 UNAVAILABLE (a retry whose first attempt is still running)
    ├── Stale                      FAILED_PRECONDITION (issued-at out of window)
    ├── QuotaExceeded              RESOURCE_EXHAUSTED
    ├── NotFound                   NOT_FOUND
    ├── Expired                    DEADLINE_EXCEEDED
    ├── AgencyUnavailable          UNAVAILABLE
    ├── AgencyFault                UNAVAILABLE (node answered wrongly)
    ├── AuditUnavailable           UNAVAILABLE (log cannot be written)
    ├── LogInconsistent            FAILED_PRECONDITION (refuse to sign/cosign)
    ├── KeyUnavailable             FAILED_PRECONDITION (key-encryption key missing or wrong)
    ├── StoreVersionError          FAILED_PRECONDITION (a store's schema version is refused)
    └── VerificationError          DATA_LOSS (audit verification failed)
        └── NotCosigned            a checkpoint lacks the witness cosignatures required (yet)
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

__all__ = [
    "AgencyFault",
    "AgencyUnavailable",
    "AuditUnavailable",
    "AuthenticationError",
    "ConfigError",
    "DecodeError",
    "Expired",
    "FedgateError",
    "FieldViolation",
    "InProgress",
    "InvalidArgument",
    "KeyNotValid",
    "KeyUnavailable",
    "LogInconsistent",
    "MemberRefused",
    "NotCosigned",
    "NotFound",
    "PeerMismatch",
    "PermissionRefused",
    "PolicyDenied",
    "QuotaExceeded",
    "RegistryError",
    "Replayed",
    "ResponseBindingError",
    "RuleViolated",
    "SignatureInvalid",
    "Stale",
    "StoreVersionError",
    "UnknownKey",
    "VerificationError",
]


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: its dotted path in the request and what is wrong."""

    field: str
    description: str


class FedgateError(Exception):
    """Root of every error fedgate raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(FedgateError):
    """A request field is missing or invalid; ``violations`` names each field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        violations: tuple[FieldViolation, ...] = (),
        reason: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = violations

    @classmethod
    def for_fields(
        cls, violations: list[FieldViolation] | tuple[FieldViolation, ...]
    ) -> InvalidArgument:
        """One error listing every violation, its message naming the fields."""
        fields = ", ".join(v.field for v in violations)
        first = violations[0].description if violations else ""
        return cls(f"invalid field(s) {fields}: {first}", violations=tuple(violations))


class DecodeError(InvalidArgument):
    """The bytes are not a well-formed message of the expected type, or too large."""

    reason = "MALFORMED"


class ConfigError(InvalidArgument):
    """A configuration file or variable is missing, malformed or inconsistent; the message names
    the option (``server.listen``)."""

    reason = "CONFIG_INVALID"


class AuthenticationError(FedgateError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class SignatureInvalid(AuthenticationError):
    """The signature does not verify over the bytes as received."""

    reason = "SIGNATURE_INVALID"


class UnknownKey(AuthenticationError):
    reason = "UNKNOWN_KEY"


class KeyNotValid(AuthenticationError):
    reason = "KEY_NOT_VALID"


class PeerMismatch(AuthenticationError):
    """The message was signed by a member other than the authenticated TLS peer."""

    reason = "PEER_MISMATCH"


class ResponseBindingError(AuthenticationError):
    """A response's request hash or request id does not match the request."""

    reason = "RESPONSE_BINDING"


class RegistryError(FedgateError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "REGISTRY_INVALID"


class MemberRefused(RegistryError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "MEMBER_REFUSED"


class PermissionRefused(FedgateError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class PolicyDenied(PermissionRefused):
    reason = "POLICY_DENIED"


class RuleViolated(PermissionRefused):
    reason = "RULE_VIOLATED"


class Replayed(FedgateError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "REPLAYED"


class InProgress(FedgateError):
    """The same signed request was sent again (a retry) while the gateway still runs the first:
    nothing was executed twice; retry again after ``retry_after_s`` to get the first's outcome."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "IN_PROGRESS"

    def __init__(
        self, message: str, *, retry_after_s: float = 0.5, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class Stale(FedgateError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "STALE"


class QuotaExceeded(FedgateError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "QUOTA_EXCEEDED"

    def __init__(self, message: str, *, retry_after_s: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class NotFound(FedgateError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class Expired(FedgateError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "EXPIRED"


class AgencyUnavailable(FedgateError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "AGENCY_UNAVAILABLE"


class AgencyFault(FedgateError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "AGENCY_FAULT"


class AuditUnavailable(FedgateError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "AUDIT_UNAVAILABLE"


class LogInconsistent(FedgateError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "LOG_INCONSISTENT"


class KeyUnavailable(FedgateError):
    """The key-encryption key that protects stored bodies is missing, unreadable, too widely
    readable or not the one the bodies were sealed under: the gateway refuses to start (it
    would otherwise store bodies nobody can read, or fail to read its own)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "KEY_UNAVAILABLE"


class VerificationError(FedgateError):
    code = grpc.StatusCode.DATA_LOSS
    reason = "VERIFICATION_FAILED"


class StoreVersionError(FedgateError):
    """A store's database is of a newer or unknown schema version, or is another store's."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "STORE_VERSION"


class NotCosigned(VerificationError):
    """A checkpoint does not (yet) carry the witness cosignatures required: not a forgery,
    the witnesses may simply not have cosigned it; ask again later."""

    reason = "NOT_COSIGNED"
