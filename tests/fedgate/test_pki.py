"""The federation PKI: layout, permissions, certificates, issue, rotation and revocation."""

from __future__ import annotations

import argparse
import os
import stat
import threading
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from fedgate.commands import pki as pki_command
from fedgate.commands import registry as registry_command
from fedgate.errors import InvalidArgument, NotFound, RegistryError
from fedgate.federation import (
    DEFAULT_MEMBERS,
    MemberKind,
    MemberSpec,
    check_member_id,
)
from fedgate.files import write_atomically
from fedgate.keys import generate_signing_key, key_id_of, load_private_key, save_private_key
from fedgate.pki import FederationLayout, init_federation, issue_member, revoke_key, revoke_member
from fedgate.registry import Registry, cert_fingerprint, load_admin_public_key
from fedgate.tls import MemberCredentials
from fedgate.types import KeyId, MemberId

BOC = MemberSpec(
    MemberId("bank.boc"), "中国银行", "Bank of China", MemberKind.BANK, ("bank_staff",), 50070
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _spec(member_id: str) -> MemberSpec:
    return next(m for m in DEFAULT_MEMBERS if m.id == member_id)


class TestDefaultMembers:
    def test_ids_ports_and_endpoints(self) -> None:
        ids = [m.id for m in DEFAULT_MEMBERS]
        assert len(ids) == len(set(ids)) == 14
        assert [m.port for m in DEFAULT_MEMBERS] == list(range(20051, 20065))
        assert _spec("gateway").endpoint == "127.0.0.1:20051"
        assert _spec("pboc.gz").roles == ("central_bank_analyst", "witness")
        assert _spec("audit.office").kind is MemberKind.AUDITOR
        assert _spec("regulator.gdca").kind is MemberKind.TELECOM_REGULATOR
        assert _spec("regulator.gdcac").kind is MemberKind.CYBERSPACE_ADMIN

    @pytest.mark.parametrize("bad", ["", "Bank.icbc", "bank..icbc", "../etc", "bank/icbc", "a_b"])
    def test_malformed_member_id_refused(self, bad: str) -> None:
        with pytest.raises(InvalidArgument, match="invalid member id"):
            check_member_id(bad)

    def test_bad_spec_refused(self) -> None:
        with pytest.raises(InvalidArgument, match="port 70000"):
            MemberSpec(MemberId("bank.x"), "x", "x", MemberKind.BANK, ("bank_staff",), 70000)
        with pytest.raises(InvalidArgument, match="roles"):
            MemberSpec(MemberId("bank.x"), "x", "x", MemberKind.BANK, (), 50100)


class TestInitFederation:
    def test_layout(self, federation_dir: Path) -> None:
        layout = FederationLayout(federation_dir)
        for path in (
            layout.ca_cert,
            layout.ca_key,
            layout.trust_ca,
            layout.admin_public_key,
            layout.admin_key,
            layout.registry,
        ):
            assert path.is_file(), path
        for spec in DEFAULT_MEMBERS:
            for path in (
                layout.tls_cert(spec.id),
                layout.tls_key(spec.id),
                layout.signing_key(spec.id),
                layout.signing_public_key(spec.id),
            ):
                assert path.is_file(), path
        assert layout.ca_cert.read_bytes() == layout.trust_ca.read_bytes()

    def test_private_files_0600_and_directories_0700(self, federation_dir: Path) -> None:
        layout = FederationLayout(federation_dir)
        private = [layout.ca_key, layout.admin_key]
        for spec in DEFAULT_MEMBERS:
            private += [layout.tls_key(spec.id), layout.signing_key(spec.id)]
        for path in private:
            assert _mode(path) == 0o600, path
        for path in [federation_dir, *federation_dir.rglob("*")]:
            if path.is_dir():
                assert _mode(path) == 0o700, path
        assert not _mode(layout.trust_ca) & 0o022

    def test_ca_certificate(self, federation_dir: Path) -> None:
        ca = _cert(FederationLayout(federation_dir).ca_cert)
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical
        assert constraints.value.ca
        public = ca.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"
        ca.verify_directly_issued_by(ca)

    def test_member_certificate(self, federation_dir: Path) -> None:
        layout = FederationLayout(federation_dir)
        ca = _cert(layout.ca_cert)
        cert = _cert(layout.tls_cert(MemberId("police.gz.unit")))
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
            "fedgate://member/police.gz.unit"
        ]
        assert "localhost" in san.get_values_for_type(x509.DNSName)
        assert set(san.get_values_for_type(x509.IPAddress)) == {
            ip_address("127.0.0.1"),
            ip_address("::1"),
        }
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.curve.name == "secp256r1"

    def test_registry_lists_the_files(self, federation_dir: Path) -> None:
        layout = FederationLayout(federation_dir)
        registry = Registry.load_dir(federation_dir)
        admin = load_private_key(layout.admin_key)
        assert key_id_of(admin) == key_id_of(load_admin_public_key(layout.admin_public_key))
        for spec in DEFAULT_MEMBERS:
            member = registry.member(spec.id)
            der = _cert(layout.tls_cert(spec.id)).public_bytes(serialization.Encoding.DER)
            assert member.cert_fingerprint == cert_fingerprint(der)
            signing = load_private_key(layout.signing_key(spec.id))
            assert [k.key_id for k in member.signing_keys] == [key_id_of(signing)]
            assert (member.name_zh, member.name_en, member.roles) == (
                spec.name_zh,
                spec.name_en,
                spec.roles,
            )

    def test_refuses_existing_federation(self, federation_dir: Path) -> None:
        before = (federation_dir / "registry.json").read_bytes()
        with pytest.raises(InvalidArgument, match="already holds a federation"):
            init_federation(federation_dir)
        assert (federation_dir / "registry.json").read_bytes() == before

    def test_refuses_non_empty_directory(self, tmp_path: Path) -> None:
        (tmp_path / "notes.txt").write_text("keep me")
        with pytest.raises(InvalidArgument, match="is not empty"):
            init_federation(tmp_path)

    def test_accepts_empty_directory(self, tmp_path: Path) -> None:
        root = init_federation(tmp_path, members=(_spec("gateway"),))
        assert Registry.load_dir(root).member(MemberId("gateway")).kind is MemberKind.GATEWAY

    def test_refuses_duplicate_members(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidArgument, match="duplicate member ids"):
            init_federation(tmp_path / "d", members=(_spec("gateway"), _spec("gateway")))

    def test_fixed_time_and_validity(self, tmp_path: Path) -> None:
        now = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
        root = init_federation(
            tmp_path / "d", members=(_spec("bank.ccb"),), now=now, validity_days=30
        )
        registry = Registry.load_dir(root, now=now)
        (key,) = registry.member(MemberId("bank.ccb")).signing_keys
        assert (key.not_before, key.not_after) == (now, now + timedelta(days=30))
        assert registry.issued_at == now


class TestIssueMember:
    def test_adds_a_member(self, mutable_federation: Path) -> None:
        issue_member(mutable_federation, BOC)
        registry = Registry.load_dir(mutable_federation)
        assert registry.serial == 2
        boc = registry.member(MemberId("bank.boc"))
        assert boc.endpoint == "127.0.0.1:50070"
        assert len(registry.members_of_kind(MemberKind.BANK)) == 5
        assert _mode(FederationLayout(mutable_federation).signing_key(boc.id)) == 0o600
        assert _mode(FederationLayout(mutable_federation).member_dir(boc.id)) == 0o700

    def test_rotation_keeps_old_key_through_overlap(self, mutable_federation: Path) -> None:
        layout = FederationLayout(mutable_federation)
        old = Registry.load_dir(mutable_federation).member(MemberId("carrier.ctcc"))
        old_cert = layout.tls_cert(old.id).read_bytes()
        now = old.signing_keys[0].not_before + timedelta(days=10)
        issue_member(mutable_federation, _spec("carrier.ctcc"), now=now)
        registry = Registry.load_dir(mutable_federation, now=now)
        member = registry.member(MemberId("carrier.ctcc"))
        old_key, new_key = member.signing_keys
        assert old_key.key_id == old.signing_keys[0].key_id
        assert old_key.not_after == now + timedelta(days=1)
        assert new_key.not_before == now
        assert new_key.key_id == key_id_of(load_private_key(layout.signing_key(member.id)))
        assert member.cert_fingerprint != old.cert_fingerprint
        assert layout.tls_cert(member.id).read_bytes() != old_cert

    def test_refuses_revoked_member(self, mutable_federation: Path) -> None:
        revoke_member(mutable_federation, MemberId("bank.ccb"), reason="merged")
        with pytest.raises(InvalidArgument, match="was revoked"):
            issue_member(mutable_federation, _spec("bank.ccb"))

    def test_refuses_kind_change(self, mutable_federation: Path) -> None:
        spec = _spec("bank.ccb")
        carrier = MemberSpec(
            spec.id, spec.name_zh, spec.name_en, MemberKind.CARRIER, ("carrier_staff",), spec.port
        )
        with pytest.raises(InvalidArgument, match="kind cannot change"):
            issue_member(mutable_federation, carrier)

    def test_refuses_taken_port(self, mutable_federation: Path) -> None:
        taken = MemberSpec(BOC.id, BOC.name_zh, BOC.name_en, BOC.kind, BOC.roles, 20051)
        with pytest.raises(InvalidArgument, match=r"already used by gateway"):
            issue_member(mutable_federation, taken)

    def test_refuses_tampered_registry(self, mutable_federation: Path) -> None:
        path = mutable_federation / "registry.json"
        data = bytearray(path.read_bytes())
        data[40] ^= 0x01
        path.write_bytes(bytes(data))
        with pytest.raises(RegistryError):
            issue_member(mutable_federation, BOC)

    def test_refuses_missing_directory(self, tmp_path: Path) -> None:
        with pytest.raises(RegistryError, match="not a federation directory"):
            issue_member(tmp_path / "none", BOC)


class TestRevoke:
    def test_revoke_member(self, mutable_federation: Path) -> None:
        revoke_member(mutable_federation, MemberId("bank.abc"), reason="left")
        registry = Registry.load_dir(mutable_federation)
        assert registry.serial == 2
        revocation = registry.revocation_of("bank.abc")
        assert revocation is not None
        assert (revocation.kind, revocation.reason) == ("member", "left")

    def test_revoke_key(self, mutable_federation: Path) -> None:
        key = Registry.load_dir(mutable_federation).member(MemberId("pboc.gz")).signing_keys[0]
        revoke_key(mutable_federation, key.key_id, reason="compromised")
        revocation = Registry.load_dir(mutable_federation).revocation_of(key.key_id)
        assert revocation is not None
        assert revocation.kind == "key"

    def test_unknown_subjects(self, mutable_federation: Path) -> None:
        with pytest.raises(NotFound, match="no member"):
            revoke_member(mutable_federation, MemberId("bank.none"), reason="x")
        with pytest.raises(NotFound, match="no signing key"):
            revoke_key(mutable_federation, KeyId("00" * 16), reason="x")

    def test_twice_and_empty_reason(self, mutable_federation: Path) -> None:
        with pytest.raises(InvalidArgument, match="needs a reason"):
            revoke_member(mutable_federation, MemberId("bank.abc"), reason="  ")
        revoke_member(mutable_federation, MemberId("bank.abc"), reason="left")
        with pytest.raises(InvalidArgument, match="already revoked"):
            revoke_member(mutable_federation, MemberId("bank.abc"), reason="again")


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedgate")
    subparsers = parser.add_subparsers(dest="command", required=True)
    pki_command.register(subparsers)
    registry_command.register(subparsers)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


class TestPkiCommand:
    def test_init_issue_revoke(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        d = str(tmp_path / "fed")
        assert _run(["pki", "init", "--dir", d]) == 0
        assert "created a federation of 14 members" in capsys.readouterr().out
        assert _run(["pki", "issue", "--dir", d, "--member", "bank.boc", "--kind", "bank",
                     "--name-zh", "中国银行", "--name-en", "Bank of China"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        assert "issued bank.boc (bank) at 127.0.0.1:20065" in out
        boc = Registry.load_dir(Path(d)).member(MemberId("bank.boc"))
        assert boc.roles == ("bank_staff",)

        assert _run(["pki", "issue", "--dir", d, "--member", "bank.boc"]) == 0
        assert "re-issued bank.boc" in capsys.readouterr().out
        assert len(Registry.load_dir(Path(d)).member(MemberId("bank.boc")).signing_keys) == 2

        key = boc.signing_keys[0].key_id
        assert _run(["pki", "revoke", "--dir", d, "--key", key, "--reason", "rotated"]) == 0
        assert _run(["pki", "revoke", "--dir", d, "--member", "bank.boc", "--reason", "x"]) == 0
        assert "serial is now 5" in capsys.readouterr().out
        assert _run(["registry", "verify", "--dir", d]) == 0

    def test_witness_policy(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        d = str(tmp_path / "fed")
        assert _run(["pki", "init", "--dir", d]) == 0
        assert _run(["registry", "show", "--dir", d]) == 0
        assert "witness policy 1 of 2 (pboc.gz, audit.office)" in capsys.readouterr().out
        assert _run(["pki", "witness-policy", "--dir", d, "--quorum", "2",
                     "--witness", "pboc.gz", "--witness", "audit.office"]) == 0  # fmt: skip
        assert "serial 2: witness policy 2 of 2" in capsys.readouterr().out
        policy = Registry.load_dir(Path(d)).witness_policy
        assert policy is not None
        assert policy.quorum == 2
        assert _run(["pki", "witness-policy", "--dir", d, "--quorum", "1",
                     "--witness", "bank.icbc"]) == 2  # fmt: skip
        assert "not a member with the witness role" in capsys.readouterr().err
        assert _run(["pki", "witness-policy", "--dir", d, "--quorum", "3",
                     "--witness", "pboc.gz"]) == 2  # fmt: skip
        assert "quorum 3 is not between 1 and the 1 witnesses" in capsys.readouterr().err
        assert Registry.load_dir(Path(d)).serial == 2

    def test_errors_exit_2(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        d = str(tmp_path / "fed")
        assert _run(["pki", "init", "--dir", d]) == 0
        assert _run(["pki", "init", "--dir", d]) == 2
        assert "fedgate: error:" in capsys.readouterr().err
        assert _run(["pki", "issue", "--dir", d, "--member", "bank.new"]) == 2
        assert "--kind, --name-zh and --name-en are required" in capsys.readouterr().err
        assert _run(["pki", "revoke", "--dir", d, "--member", "bank.x", "--reason", "r"]) == 2
        assert "no member 'bank.x'" in capsys.readouterr().err

    def test_revoke_needs_exactly_one_subject(self, tmp_path: Path) -> None:
        with pytest.raises(SystemExit):
            _run(["pki", "revoke", "--dir", str(tmp_path), "--reason", "r"])


class TestPrivateKeyFiles:
    """Issue 10, item 9: keys are 0600 from the moment they exist; readable keys are refused."""

    def test_a_key_written_over_a_readable_file_never_lands_in_it(self, tmp_path: Path) -> None:
        path = tmp_path / "signing.key"
        path.write_bytes(b"old")
        path.chmod(0o644)
        old_inode = path.stat().st_ino
        save_private_key(generate_signing_key(), path)
        # A new file, created 0600, replaced the readable one: the key was never in a 0644 file.
        assert path.stat().st_ino != old_inode
        assert _mode(path) == 0o600
        assert load_private_key(path) is not None

    def test_a_leftover_temporary_file_is_not_reused(self, tmp_path: Path) -> None:
        path = tmp_path / "key.pem"
        for leftover in tmp_path.glob(".key.pem.*"):
            leftover.unlink()
        write_atomically(path, b"first", mode=0o600)
        tmp = next(iter(tmp_path.glob(".key.pem.*")), None)
        assert tmp is None
        stale = tmp_path / f".key.pem.{os.getpid()}.{threading.get_ident()}.tmp"
        stale.write_bytes(b"x")
        stale.chmod(0o666)
        write_atomically(path, b"second", mode=0o600)
        assert path.read_bytes() == b"second"
        assert _mode(path) == 0o600  # not the leftover's 0666

    @pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
    def test_a_signing_key_others_may_read_is_refused(self, tmp_path: Path, mode: int) -> None:
        path = tmp_path / "signing.key"
        save_private_key(generate_signing_key(), path)
        path.chmod(mode)
        with pytest.raises(PermissionError, match=r"unprotected private key file .*chmod 600"):
            load_private_key(path)

    @pytest.mark.parametrize("which", ["signing", "tls"])
    def test_member_credentials_refuse_readable_keys(
        self, mutable_federation: Path, which: str
    ) -> None:
        layout = FederationLayout(mutable_federation)
        member = MemberId("police.gd.afc")
        path = layout.signing_key(member) if which == "signing" else layout.tls_key(member)
        path.chmod(0o644)
        with pytest.raises(RegistryError, match=r"unprotected private key file .*0644"):
            MemberCredentials.load(mutable_federation, member)
        path.chmod(0o600)
        assert MemberCredentials.load(mutable_federation, member).member_id == member

    def test_a_readable_ca_key_is_refused_when_issuing(self, mutable_federation: Path) -> None:
        FederationLayout(mutable_federation).ca_key.chmod(0o640)
        with pytest.raises(RegistryError, match="unprotected private key file"):
            issue_member(mutable_federation, BOC)

    def test_a_readable_admin_key_is_refused_when_revoking(self, mutable_federation: Path) -> None:
        FederationLayout(mutable_federation).admin_key.chmod(0o644)
        with pytest.raises(RegistryError, match="unprotected private key file"):
            revoke_member(mutable_federation, MemberId("bank.ccb"), reason="test")
