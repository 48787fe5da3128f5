"""Mutual TLS between members: credentials, gRPC credential objects and the peer's identity.

A member's identity on the wire is the SAN URI ``fedgate://member/<id>`` of its certificate,
which the federation CA issued (``fedgate.pki``). Servers require a client certificate chaining
to the federation CA; handlers take the caller's member id from the certificate with
``peer_member_id``, never from the message, and should then check the certificate against the
member registry (``Registry.check_certificate``) so that revoked or re-issued certificates are
refused.

TLS version: grpcio (1.85) cannot be told to negotiate TLS 1.3 only. ``ssl_server_credentials``
and ``ssl_channel_credentials`` take no version argument, and there is no channel argument or
environment variable for it (``GRPC_SSL_CIPHER_SUITES`` selects TLS 1.2 cipher suites only);
gRPC core accepts TLS 1.2 to 1.3 (upstream: grpc/grpc#37305, #43045, #43080). Two grpcio peers
negotiate TLS 1.3. The server side enforces it after the handshake instead: the auth context
reports the negotiated version (``ssl_tls_version``) and ``peer_member_id`` refuses every call
made over anything but TLS 1.3. A client cannot check the server's version from Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.errors import AuthenticationError, InvalidArgument, MemberRefused, RegistryError
from fedgate.federation import MEMBER_URI_PREFIX, check_member_id, member_server_name
from fedgate.files import read_private_file
from fedgate.keys import key_id_of, load_private_key
from fedgate.pki import FederationLayout
from fedgate.types import KeyId, MemberId

__all__ = [
    "REQUIRED_TLS_VERSION",
    "MemberCredentials",
    "channel_credentials",
    "channel_options",
    "member_id_from_certificate",
    "member_id_from_pem",
    "peer_member_id",
    "server_credentials",
]

_PEER_CERT = "x509_pem_cert"
_TLS_VERSION = "ssl_tls_version"
REQUIRED_TLS_VERSION = b"TLSv1.3"


def member_id_from_certificate(cert: x509.Certificate) -> MemberId:
    """The member id in the certificate's one ``fedgate://member/<id>`` SAN URI.

    Raises ``MemberRefused`` if there is none, more than one, or the id is malformed.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise MemberRefused("the certificate has no subject alternative names") from exc
    ids = [
        uri.removeprefix(MEMBER_URI_PREFIX)
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier)
        if uri.startswith(MEMBER_URI_PREFIX)
    ]
    if len(ids) != 1:
        raise MemberRefused(
            f"the certificate must name exactly one member ({MEMBER_URI_PREFIX}<id>), "
            f"it names {len(ids)}"
        )
    try:
        return check_member_id(ids[0])
    except InvalidArgument as exc:
        raise MemberRefused(f"the certificate names a malformed member: {exc.message}") from exc


def member_id_from_pem(pem: bytes) -> MemberId:
    """``member_id_from_certificate`` for a PEM certificate; raises ``AuthenticationError`` if
    it does not parse."""
    return member_id_from_certificate(_parse_pem(pem))


def peer_member_id(
    context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
) -> tuple[MemberId, bytes]:
    """The calling member's id and its certificate (DER), from the TLS session.

    Raises ``AuthenticationError`` when the call carries no client certificate (an insecure
    port, or TLS without client authentication) or was not made over TLS 1.3, and
    ``MemberRefused`` when the certificate names no member.
    """
    auth: Mapping[str, object] = context.auth_context()
    pems = _as_list(auth.get(_PEER_CERT))
    if len(pems) != 1:
        raise AuthenticationError(
            "the call carries no client certificate: members must connect with mutual TLS"
        )
    versions = _as_list(auth.get(_TLS_VERSION))
    if versions != [REQUIRED_TLS_VERSION]:
        # Fail closed: a missing version means we cannot tell, which is as bad as TLS 1.2.
        shown = b", ".join(versions).decode("ascii", "replace") or "unknown"
        raise AuthenticationError(f"the connection uses {shown}; members must connect with TLS 1.3")
    cert = _parse_pem(pems[0])
    return member_id_from_certificate(cert), cert.public_bytes(serialization.Encoding.DER)


@dataclass(frozen=True, slots=True)
class MemberCredentials:
    """What a member process needs to speak for its member: TLS certificate and key, the
    federation CA and the Ed25519 signing key. Private parts are kept out of ``repr``."""

    member_id: MemberId
    tls_cert_pem: bytes
    tls_key_pem: bytes = field(repr=False)
    ca_pem: bytes
    signing_key: Ed25519PrivateKey = field(repr=False)

    @property
    def key_id(self) -> KeyId:
        """The id of the signing key."""
        return key_id_of(self.signing_key)

    @classmethod
    def load(cls, directory: Path, member_id: MemberId) -> MemberCredentials:
        """Load ``members/<id>/`` and ``trust/ca.pem`` from a federation directory.

        Raises ``RegistryError`` when a file is missing or unreadable, or when the certificate
        is not the member's, not issued by the federation CA, or not for the TLS key.
        """
        layout = FederationLayout(Path(directory))
        cert_pem = _read(layout.tls_cert(member_id), member_id)
        key_pem = _read(layout.tls_key(member_id), member_id, private=True)
        ca_pem = _read(layout.trust_ca, member_id)
        try:
            signing_key = load_private_key(layout.signing_key(member_id))
            cert = x509.load_pem_x509_certificate(cert_pem)
            ca = x509.load_pem_x509_certificate(ca_pem)
            tls_key = serialization.load_pem_private_key(key_pem, password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise RegistryError(f"cannot load the credentials of {member_id}: {exc}") from exc
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise RegistryError(
                f"{layout.tls_cert(member_id)} was not issued by the federation CA in "
                f"{layout.trust_ca}: copy both from the same federation directory"
            ) from exc
        if member_id_from_certificate(cert) != member_id:
            raise RegistryError(f"{layout.tls_cert(member_id)} is not a certificate of {member_id}")
        if tls_key.public_key() != cert.public_key():
            raise RegistryError(
                f"{layout.tls_key(member_id)} does not belong to {layout.tls_cert(member_id)}"
            )
        return cls(member_id, cert_pem, key_pem, ca_pem, signing_key)


def server_credentials(creds: MemberCredentials) -> grpc.ServerCredentials:
    """Server TLS credentials that require a client certificate from the federation CA."""
    return grpc.ssl_server_credentials(
        [(creds.tls_key_pem, creds.tls_cert_pem)],
        root_certificates=creds.ca_pem,
        require_client_auth=True,
    )


def channel_credentials(creds: MemberCredentials) -> grpc.ChannelCredentials:
    """Client TLS credentials presenting the member's certificate, trusting the federation CA."""
    return grpc.ssl_channel_credentials(
        root_certificates=creds.ca_pem,
        private_key=creds.tls_key_pem,
        certificate_chain=creds.tls_cert_pem,
    )


def channel_options(server: MemberId) -> list[tuple[str, str]]:
    """Channel options that make the client accept only ``server``'s certificate.

    Every member certificate is valid for ``localhost`` and the loopback addresses; with these
    options the TLS handshake checks the member-unique name ``<id>.member.fedgate.invalid``
    instead, so one member cannot pose as another on a port it controls.
    """
    return [("grpc.ssl_target_name_override", member_server_name(server))]


def _parse_pem(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise AuthenticationError(f"the peer certificate does not parse: {exc}") from exc


def _as_list(value: object) -> list[bytes]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, Iterable):
        return [v for v in value if isinstance(v, bytes)]
    return []


def _read(path: Path, member_id: MemberId, *, private: bool = False) -> bytes:
    try:
        return read_private_file(path) if private else path.read_bytes()
    except PermissionError as exc:
        raise RegistryError(f"cannot load the credentials of {member_id}: {exc}") from exc
    except OSError as exc:
        raise RegistryError(
            f"cannot read {path} for {member_id}: {exc.strerror or exc}; issue the member with "
            "`fedgate pki issue` or copy its directory from the administrator"
        ) from exc
