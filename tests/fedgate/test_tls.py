"""Member identity from certificates, credential loading, and real mTLS handshakes over loopback."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from fedgate.errors import AuthenticationError, FedgateError, MemberRefused, RegistryError
from fedgate.federation import DEFAULT_MEMBERS
from fedgate.pki import FederationLayout, issue_member
from fedgate.registry import Registry
from fedgate.tls import (
    MemberCredentials,
    channel_credentials,
    channel_options,
    member_id_from_certificate,
    member_id_from_pem,
    peer_member_id,
    server_credentials,
)
from fedgate.types import MemberId

GATEWAY = MemberId("gateway")
ICBC = MemberId("bank.icbc")


def _self_signed(names: list[x509.GeneralName] | None) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(x509.Name([]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, hashes.SHA256())


class TestMemberIdFromCertificate:
    def test_every_default_member(self, federation_dir: Path) -> None:
        layout = FederationLayout(federation_dir)
        for spec in DEFAULT_MEMBERS:
            assert member_id_from_pem(layout.tls_cert(spec.id).read_bytes()) == spec.id

    def test_no_san_refused(self) -> None:
        with pytest.raises(MemberRefused, match="no subject alternative names"):
            member_id_from_certificate(_self_signed(None))

    def test_no_member_uri_refused(self) -> None:
        cert = _self_signed(
            [x509.DNSName("localhost"), x509.UniformResourceIdentifier("https://x")]
        )
        with pytest.raises(MemberRefused, match="names 0"):
            member_id_from_certificate(cert)

    def test_two_member_uris_refused(self) -> None:
        cert = _self_signed(
            [
                x509.UniformResourceIdentifier("fedgate://member/bank.icbc"),
                x509.UniformResourceIdentifier("fedgate://member/gateway"),
            ]
        )
        with pytest.raises(MemberRefused, match="names 2"):
            member_id_from_certificate(cert)

    def test_malformed_member_refused(self) -> None:
        cert = _self_signed([x509.UniformResourceIdentifier("fedgate://member/../gateway")])
        with pytest.raises(MemberRefused, match="malformed member"):
            member_id_from_certificate(cert)

    def test_garbage_pem_refused(self) -> None:
        with pytest.raises(AuthenticationError, match="does not parse"):
            member_id_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


class TestMemberCredentials:
    def test_load(self, federation_dir: Path) -> None:
        creds = MemberCredentials.load(federation_dir, ICBC)
        registry = Registry.load_dir(federation_dir)
        assert creds.member_id == ICBC
        assert creds.key_id == registry.member(ICBC).signing_keys[0].key_id
        assert b"PRIVATE KEY" not in repr(creds).encode()
        assert "signing_key" not in repr(creds)

    def test_missing_member(self, federation_dir: Path) -> None:
        with pytest.raises(RegistryError, match=r"cannot read .*bank\.none"):
            MemberCredentials.load(federation_dir, MemberId("bank.none"))

    def test_foreign_ca_refused(self, mutable_federation: Path, other_federation_dir: Path) -> None:
        shutil.copyfile(
            other_federation_dir / "trust" / "ca.pem", mutable_federation / "trust" / "ca.pem"
        )
        with pytest.raises(RegistryError, match="not issued by the federation CA"):
            MemberCredentials.load(mutable_federation, ICBC)

    def test_wrong_member_directory_refused(self, mutable_federation: Path) -> None:
        layout = FederationLayout(mutable_federation)
        for name in ("tls.pem", "tls.key"):
            shutil.copyfile(layout.member_dir(GATEWAY) / name, layout.member_dir(ICBC) / name)
        with pytest.raises(RegistryError, match=r"is not a certificate of bank\.icbc"):
            MemberCredentials.load(mutable_federation, ICBC)

    def test_key_of_other_certificate_refused(self, mutable_federation: Path) -> None:
        layout = FederationLayout(mutable_federation)
        shutil.copyfile(layout.tls_key(GATEWAY), layout.tls_key(ICBC))
        with pytest.raises(RegistryError, match="does not belong to"):
            MemberCredentials.load(mutable_federation, ICBC)


class _FakeContext:
    """A servicer context carrying a given auth context (stands in for the gRPC runtime)."""

    def __init__(self, auth: Mapping[str, list[bytes]]) -> None:
        self._auth = auth

    def auth_context(self) -> Mapping[str, list[bytes]]:
        return self._auth


class TestPeerMemberIdContext:
    def test_tls12_refused(self, federation_dir: Path) -> None:
        pem = FederationLayout(federation_dir).tls_cert(ICBC).read_bytes()
        ctx = _FakeContext({"x509_pem_cert": [pem], "ssl_tls_version": [b"TLSv1.2"]})
        with pytest.raises(
            AuthenticationError, match=r"uses TLSv1\.2; members must connect with TLS 1\.3"
        ):
            peer_member_id(ctx)  # type: ignore[arg-type]

    def test_unknown_version_refused(self, federation_dir: Path) -> None:
        pem = FederationLayout(federation_dir).tls_cert(ICBC).read_bytes()
        ctx = _FakeContext({"x509_pem_cert": [pem]})
        with pytest.raises(AuthenticationError, match="uses unknown"):
            peer_member_id(ctx)  # type: ignore[arg-type]


async def _who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    try:
        member_id, der = peer_member_id(context)
        Registry.load_dir(Path(request.decode())).check_certificate(member_id, der)
    except FedgateError as exc:
        await context.abort(exc.code, f"{exc.reason}: {exc.message}")
    return member_id.encode()


@asynccontextmanager
async def _server(creds: grpc.ServerCredentials | None) -> AsyncIterator[int]:
    handler = grpc.method_handlers_generic_handler(
        "test.Who", {"Who": grpc.unary_unary_rpc_method_handler(_who)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    if creds is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def _call(
    port: int,
    creds: grpc.ChannelCredentials | None,
    federation_dir: Path,
    options: list[tuple[str, str]] | None = None,
) -> bytes:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.aio.insecure_channel(target)
        if creds is None
        else grpc.aio.secure_channel(target, creds, options=options)
    )
    async with channel:
        method = channel.unary_unary("/test.Who/Who", None, None)
        response: bytes = await method(str(federation_dir).encode(), timeout=5)
        return response


class TestMutualTls:
    async def test_member_identified(self, federation_dir: Path) -> None:
        gateway = MemberCredentials.load(federation_dir, GATEWAY)
        icbc = MemberCredentials.load(federation_dir, ICBC)
        async with _server(server_credentials(gateway)) as port:
            assert await _call(port, channel_credentials(icbc), federation_dir) == b"bank.icbc"
            pinned = channel_options(GATEWAY)
            reply = await _call(port, channel_credentials(icbc), federation_dir, pinned)
            assert reply == b"bank.icbc"

    async def test_client_without_certificate_refused(self, federation_dir: Path) -> None:
        gateway = MemberCredentials.load(federation_dir, GATEWAY)
        anonymous = grpc.ssl_channel_credentials(root_certificates=gateway.ca_pem)
        async with _server(server_credentials(gateway)) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(port, anonymous, federation_dir)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_client_from_other_ca_refused(
        self, federation_dir: Path, other_federation_dir: Path
    ) -> None:
        gateway = MemberCredentials.load(federation_dir, GATEWAY)
        stranger = MemberCredentials.load(other_federation_dir, ICBC)
        # The stranger trusts our CA, so only the server's check of its certificate stops it.
        creds = grpc.ssl_channel_credentials(
            root_certificates=gateway.ca_pem,
            private_key=stranger.tls_key_pem,
            certificate_chain=stranger.tls_cert_pem,
        )
        async with _server(server_credentials(gateway)) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(port, creds, federation_dir)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_server_from_other_ca_refused(
        self, federation_dir: Path, other_federation_dir: Path
    ) -> None:
        impostor = MemberCredentials.load(other_federation_dir, GATEWAY)
        icbc = MemberCredentials.load(federation_dir, ICBC)
        async with _server(server_credentials(impostor)) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(port, channel_credentials(icbc), federation_dir)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_pinned_server_name_refuses_other_member(self, federation_dir: Path) -> None:
        # bank.ccb serves with its own valid certificate, but the client expects the gateway.
        ccb = MemberCredentials.load(federation_dir, MemberId("bank.ccb"))
        icbc = MemberCredentials.load(federation_dir, ICBC)
        async with _server(server_credentials(ccb)) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(
                    port, channel_credentials(icbc), federation_dir, channel_options(GATEWAY)
                )
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_insecure_call_has_no_member(self, federation_dir: Path) -> None:
        async with _server(None) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(port, None, federation_dir)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "no client certificate" in (info.value.details() or "")

    async def test_reissued_certificate_refused_by_registry(self, mutable_federation: Path) -> None:
        # The old certificate still chains to the CA, so TLS accepts it; the registry does not.
        gateway = MemberCredentials.load(mutable_federation, GATEWAY)
        old = MemberCredentials.load(mutable_federation, ICBC)
        issue_member(mutable_federation, next(m for m in DEFAULT_MEMBERS if m.id == ICBC))
        async with _server(server_credentials(gateway)) as port:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _call(port, channel_credentials(old), mutable_federation)
            new = MemberCredentials.load(mutable_federation, ICBC)
            assert await _call(port, channel_credentials(new), mutable_federation) == b"bank.icbc"
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "not the one in the member registry" in (info.value.details() or "")
