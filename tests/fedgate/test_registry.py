"""The signed member registry: verification, corruption, revocation and key windows."""

from __future__ import annotations

import argparse
import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.commands import pki as pki_command
from fedgate.commands import registry as registry_command
from fedgate.errors import (
    InvalidArgument,
    KeyNotValid,
    MemberRefused,
    RegistryError,
    UnknownKey,
)
from fedgate.federation import DEFAULT_MEMBERS, MemberKind, member_uri
from fedgate.keys import generate_signing_key, key_id_of, load_private_key, raw_public_key
from fedgate.pki import FederationLayout, issue_member, revoke_key, revoke_member
from fedgate.registry import (
    REGISTRY_DOMAIN,
    Registry,
    Revocation,
    SigningKey,
    canonical_json,
    cert_fingerprint,
    load_admin_public_key,
    sign_registry,
)
from fedgate.types import KeyId, MemberId


def _load_bytes(directory: Path, data: bytes) -> Registry:
    return Registry.from_signed(
        data, admin_public_key=load_admin_public_key(directory / "trust" / "admin.pub")
    )


def _payload_span(data: bytes) -> tuple[int, int]:
    """Start and end offsets of the base64 payload text inside registry.json."""
    start = data.index(b'"payload":"') + len(b'"payload":"')
    return start, data.index(b'"', start)


def _cert_der(directory: Path, member_id: str) -> bytes:
    pem = FederationLayout(directory).tls_cert(MemberId(member_id)).read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


def _resign(directory: Path, payload: bytes) -> bytes:
    """A registry.json over arbitrary payload bytes, properly signed by the administrator."""
    admin = load_private_key(FederationLayout(directory).admin_key)
    wrapper = {
        "format": "fedgate-registry/v1",
        "key_id": json.loads((directory / "registry.json").read_bytes())["key_id"],
        "payload": base64.b64encode(payload).decode(),
        "signature": base64.b64encode(admin.sign(REGISTRY_DOMAIN + payload)).decode(),
    }
    return canonical_json(wrapper) + b"\n"


class TestRegistryLoad:
    def test_default_federation_verifies(self, federation_registry: Registry) -> None:
        assert federation_registry.serial == 1
        assert len(federation_registry.members()) == 14
        assert [m.id for m in federation_registry.members_of_kind(MemberKind.BANK)] == [
            "bank.icbc",
            "bank.ccb",
            "bank.abc",
            "bank.gzrcb",
        ]

    def test_member_fields(self, federation_registry: Registry) -> None:
        afc = federation_registry.member(MemberId("police.gd.afc"))
        assert afc.name_zh == "广东省公安厅反诈中心"
        assert afc.kind is MemberKind.POLICE
        assert "centre_supervisor" in afc.roles
        assert afc.endpoint == "127.0.0.1:20052"
        assert federation_registry.member(MemberId("gateway")).endpoint == "127.0.0.1:20051"
        assert len(afc.signing_keys) == 1

    def test_payload_round_trips(self, federation_registry: Registry) -> None:
        again = Registry.from_payload(federation_registry.to_payload())
        assert again == federation_registry
        assert again.to_payload() == federation_registry.to_payload()

    def test_payload_keeps_chinese_unescaped(self, federation_registry: Registry) -> None:
        assert "中国工商银行".encode() in federation_registry.to_payload()

    def test_unknown_member_refused(self, federation_registry: Registry) -> None:
        with pytest.raises(MemberRefused, match=r"'bank\.nobody' is not a member"):
            federation_registry.member(MemberId("bank.nobody"))

    def test_missing_file_says_how_to_create(self, tmp_path: Path) -> None:
        with pytest.raises(RegistryError, match="cannot read the administrator public key"):
            Registry.load_dir(tmp_path)

    def test_registry_from_the_future_refused(self, federation_dir: Path) -> None:
        past = datetime.now(UTC) - timedelta(hours=1)
        with pytest.raises(RegistryError, match="check the clocks"):
            Registry.load_dir(federation_dir, now=past)


class TestRegistryTamper:
    def test_every_payload_byte_flip_rejected(self, small_federation_dir: Path) -> None:
        data = (small_federation_dir / "registry.json").read_bytes()
        _load_bytes(small_federation_dir, data)
        start, end = _payload_span(data)
        for i in range(start, end):
            for mask in (0x01, 0x20):
                corrupt = bytearray(data)
                corrupt[i] ^= mask
                with pytest.raises(RegistryError):
                    _load_bytes(small_federation_dir, bytes(corrupt))

    def test_every_byte_of_the_file_matters(self, small_federation_dir: Path) -> None:
        data = (small_federation_dir / "registry.json").read_bytes()
        for i in range(len(data)):
            corrupt = bytearray(data)
            corrupt[i] ^= 0x01
            with pytest.raises(RegistryError):
                _load_bytes(small_federation_dir, bytes(corrupt))

    @settings(max_examples=200, deadline=None)
    @given(position=st.floats(0, 1, exclude_max=True), value=st.integers(0, 255))
    def test_any_byte_replacement_in_full_registry_rejected(
        self, federation_dir: Path, position: float, value: int
    ) -> None:
        data = (federation_dir / "registry.json").read_bytes()
        i = int(position * len(data))
        if data[i] == value:
            return
        corrupt = bytearray(data)
        corrupt[i] = value
        with pytest.raises(RegistryError):
            _load_bytes(federation_dir, bytes(corrupt))

    def test_payload_flip_names_the_signature(self, federation_dir: Path) -> None:
        data = bytearray((federation_dir / "registry.json").read_bytes())
        start, end = _payload_span(bytes(data))
        i = (start + end) // 2
        data[i] = ord("A") if data[i] != ord("A") else ord("B")
        with pytest.raises(RegistryError, match=r"signature does not verify with trust/admin\.pub"):
            _load_bytes(federation_dir, bytes(data))

    def test_signature_flip_rejected(self, federation_dir: Path) -> None:
        doc = json.loads((federation_dir / "registry.json").read_bytes())
        signature = bytearray(base64.b64decode(doc["signature"]))
        for i in (0, 31, 63):
            bad = bytearray(signature)
            bad[i] ^= 0x80
            doc2 = {**doc, "signature": base64.b64encode(bytes(bad)).decode()}
            with pytest.raises(RegistryError, match="signature does not verify"):
                _load_bytes(federation_dir, canonical_json(doc2) + b"\n")

    def test_truncated_signature_rejected(self, federation_dir: Path) -> None:
        doc = json.loads((federation_dir / "registry.json").read_bytes())
        doc["signature"] = base64.b64encode(base64.b64decode(doc["signature"])[:63]).decode()
        with pytest.raises(RegistryError, match="signature does not verify"):
            _load_bytes(federation_dir, canonical_json(doc) + b"\n")

    def test_other_administrator_refused(
        self, federation_dir: Path, other_federation_dir: Path
    ) -> None:
        data = (other_federation_dir / "registry.json").read_bytes()
        with pytest.raises(RegistryError, match="signed by administrator key"):
            _load_bytes(federation_dir, data)

    def test_forged_key_id_refused(self, federation_dir: Path, other_federation_dir: Path) -> None:
        # Another administrator's registry relabelled with our key id still fails the signature.
        ours = json.loads((federation_dir / "registry.json").read_bytes())
        theirs = json.loads((other_federation_dir / "registry.json").read_bytes())
        forged = canonical_json({**theirs, "key_id": ours["key_id"]}) + b"\n"
        with pytest.raises(RegistryError, match="signature does not verify"):
            _load_bytes(federation_dir, forged)

    def test_edited_wrapper_refused(self, federation_dir: Path) -> None:
        data = (federation_dir / "registry.json").read_bytes()
        pretty = json.dumps(json.loads(data), indent=2).encode()
        with pytest.raises(RegistryError, match="edited outside fedgate"):
            _load_bytes(federation_dir, pretty)

    def test_non_canonical_base64_refused(self, small_federation_dir: Path) -> None:
        base = _load_bytes(
            small_federation_dir, (small_federation_dir / "registry.json").read_bytes()
        )
        admin = load_private_key(FederationLayout(small_federation_dir).admin_key)
        # Pick a payload length that leaves unused bits in the last base64 character.
        for n in range(1, 4):
            registry = replace(
                base,
                revocations=(Revocation("bank.icbc", "member", base.issued_at, "x" * n),),
            )
            if len(registry.to_payload()) % 3 == 1:
                break
        doc = json.loads(sign_registry(registry, admin))
        text = doc["payload"]
        assert text.endswith("==")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = alphabet.index(text[-3])
        doc["payload"] = text[:-3] + alphabet[last | 1] + "=="
        assert base64.b64decode(doc["payload"]) == registry.to_payload()
        with pytest.raises(RegistryError, match="not canonical standard base64"):
            _load_bytes(small_federation_dir, canonical_json(doc) + b"\n")

    def test_not_json_refused(self, federation_dir: Path) -> None:
        with pytest.raises(RegistryError, match="not valid JSON"):
            _load_bytes(federation_dir, b"\xff{not json")

    def test_extra_wrapper_field_refused(self, federation_dir: Path) -> None:
        doc = json.loads((federation_dir / "registry.json").read_bytes())
        doc["note"] = "hello"
        with pytest.raises(RegistryError, match="exactly the fields"):
            _load_bytes(federation_dir, canonical_json(doc) + b"\n")

    def test_signed_payload_missing_field_refused(self, federation_dir: Path) -> None:
        payload = json.loads(Registry.load_dir(federation_dir).to_payload())
        del payload["members"]
        data = _resign(federation_dir, canonical_json(payload))
        with pytest.raises(RegistryError, match="missing the field 'members'"):
            _load_bytes(federation_dir, data)

    def test_signed_payload_bad_key_id_refused(self, federation_dir: Path) -> None:
        payload = json.loads(Registry.load_dir(federation_dir).to_payload())
        payload["members"][0]["signing_keys"][0]["key_id"] = "00" * 16
        data = _resign(federation_dir, canonical_json(payload))
        with pytest.raises(RegistryError, match="does not match its key"):
            _load_bytes(federation_dir, data)

    def test_signed_payload_bad_kind_refused(self, federation_dir: Path) -> None:
        payload = json.loads(Registry.load_dir(federation_dir).to_payload())
        payload["members"][0]["kind"] = "pirate"
        with pytest.raises(RegistryError, match="unknown kind 'pirate'"):
            _load_bytes(federation_dir, _resign(federation_dir, canonical_json(payload)))


class TestRegistryConsistency:
    def test_duplicate_member_refused(self, federation_registry: Registry) -> None:
        first = federation_registry.entries[0]
        with pytest.raises(RegistryError, match="listed twice"):
            Registry(2, federation_registry.issued_at, (first, first))

    def test_revocation_of_nobody_refused(self, federation_registry: Registry) -> None:
        ghost = Revocation("bank.ghost", "member", federation_registry.issued_at, "x")
        with pytest.raises(RegistryError, match="revocation of unknown member"):
            replace(federation_registry, revocations=(ghost,))

    def test_empty_key_window_refused(self, federation_registry: Registry) -> None:
        m = federation_registry.entries[0]
        k = m.signing_keys[0]
        broken = replace(m, signing_keys=(replace(k, not_after=k.not_before),))
        with pytest.raises(RegistryError, match="empty validity window"):
            Registry(2, federation_registry.issued_at, (broken,))


class TestPoliceHierarchy:
    def test_the_city_unit_is_under_the_provincial_centre(
        self, federation_registry: Registry
    ) -> None:
        r = federation_registry
        assert r.member(MemberId("police.gz.unit")).parent == "police.gd.afc"
        assert r.ancestors("police.gz.unit") == ("police.gd.afc",)
        assert r.is_same_or_above("police.gd.afc", "police.gz.unit")
        assert r.is_same_or_above("police.gz.unit", "police.gz.unit")
        assert not r.is_same_or_above("police.gz.unit", "police.gd.afc")
        assert not r.is_same_or_above("bank.icbc", "police.gz.unit")

    def test_parent_round_trips_and_is_absent_when_unset(
        self, federation_registry: Registry
    ) -> None:
        payload = federation_registry.to_payload()
        assert Registry.from_payload(payload) == federation_registry
        members = json.loads(payload)["members"]
        with_parent = {m["id"]: m.get("parent") for m in members if "parent" in m}
        assert with_parent == {"police.gz.unit": "police.gd.afc"}

    @pytest.mark.parametrize(
        ("member", "parent", "message"),
        [
            ("police.gz.unit", "police.nowhere", "which is not listed"),
            ("police.gz.unit", "bank.icbc", "only police members form a hierarchy"),
            ("bank.ccb", "police.gd.afc", "only police members form a hierarchy"),
            ("police.gd.afc", "police.gz.unit", "form a cycle"),
        ],
    )
    def test_a_bad_hierarchy_is_refused(
        self, federation_registry: Registry, member: str, parent: str, message: str
    ) -> None:
        entries = tuple(
            replace(m, parent=MemberId(parent)) if m.id == member else m
            for m in federation_registry.entries
        )
        with pytest.raises(RegistryError, match=message):
            Registry(2, federation_registry.issued_at, entries)


class TestSigningKey:
    def test_valid_key_resolves_and_verifies(
        self, federation_dir: Path, federation_registry: Registry
    ) -> None:
        key = federation_registry.member(MemberId("bank.icbc")).signing_keys[0]
        member, public = federation_registry.signing_key(key.key_id, at=key.not_before)
        assert member.id == "bank.icbc"
        signer = load_private_key(FederationLayout(federation_dir).signing_key(member.id))
        public.verify(signer.sign(b"message"), b"message")

    def test_a_key_is_parsed_once_per_registry(self, federation_registry: Registry) -> None:
        key = federation_registry.member(MemberId("bank.icbc")).signing_keys[0]
        _, first = federation_registry.signing_key(key.key_id, at=key.not_before)
        _, again = federation_registry.signing_key(key.key_id, at=key.not_before)
        assert again is first  # so the verifier cache of fedgate.keys finds it
        assert raw_public_key(first) == key.public_key

    def test_window_is_half_open(self) -> None:
        signer = generate_signing_key()
        t = datetime(2026, 1, 1, tzinfo=UTC)
        k = SigningKey(key_id_of(signer), raw_public_key(signer), t, t + timedelta(days=1))
        assert k.valid_at(t)
        assert not k.valid_at(t - timedelta(microseconds=1))
        assert not k.valid_at(t + timedelta(days=1))

    def test_unknown_key(self, federation_registry: Registry) -> None:
        with pytest.raises(UnknownKey, match="not in the member registry"):
            federation_registry.signing_key(KeyId("ab" * 16), at=datetime.now(UTC))

    def test_key_before_window(self, federation_registry: Registry) -> None:
        key = federation_registry.member(MemberId("bank.ccb")).signing_keys[0]
        with pytest.raises(KeyNotValid, match="is valid from"):
            federation_registry.signing_key(key.key_id, at=key.not_before - timedelta(seconds=1))

    def test_key_after_window(self, federation_registry: Registry) -> None:
        key = federation_registry.member(MemberId("bank.ccb")).signing_keys[0]
        federation_registry.signing_key(key.key_id, at=key.not_after - timedelta(seconds=1))
        with pytest.raises(KeyNotValid, match="is valid from"):
            federation_registry.signing_key(key.key_id, at=key.not_after)
        with pytest.raises(KeyNotValid, match="is valid from"):
            federation_registry.signing_key(key.key_id, at=key.not_after + timedelta(days=1))

    def test_naive_time_refused(self, federation_registry: Registry) -> None:
        key = federation_registry.member(MemberId("bank.ccb")).signing_keys[0]
        with pytest.raises(InvalidArgument, match="timezone-aware"):
            federation_registry.signing_key(key.key_id, at=datetime(2026, 1, 1))

    def test_revoked_key_refused(self, mutable_federation: Path) -> None:
        registry = Registry.load_dir(mutable_federation)
        key = registry.member(MemberId("carrier.cmcc")).signing_keys[0]
        revoke_key(mutable_federation, key.key_id, reason="key leaked")
        registry = Registry.load_dir(mutable_federation)
        with pytest.raises(KeyNotValid, match=r"was revoked at .*: key leaked"):
            registry.signing_key(key.key_id, at=key.not_before + timedelta(minutes=1))
        # The member itself stays in good standing.
        assert registry.member(MemberId("carrier.cmcc")).id == "carrier.cmcc"

    def test_key_of_revoked_member_refused(self, mutable_federation: Path) -> None:
        registry = Registry.load_dir(mutable_federation)
        key = registry.member(MemberId("bank.abc")).signing_keys[0]
        revoke_member(mutable_federation, MemberId("bank.abc"), reason="left the federation")
        registry = Registry.load_dir(mutable_federation)
        with pytest.raises(MemberRefused, match=r"member bank\.abc was revoked"):
            registry.signing_key(key.key_id, at=key.not_before + timedelta(minutes=1))

    def test_rotated_keys_both_valid_during_overlap(self, mutable_federation: Path) -> None:
        old_registry = Registry.load_dir(mutable_federation)
        old = old_registry.member(MemberId("bank.gzrcb"))
        spec_now = old.signing_keys[0].not_before + timedelta(hours=1)
        spec = next(m for m in DEFAULT_MEMBERS if m.id == "bank.gzrcb")
        issue_member(mutable_federation, spec, now=spec_now)
        registry = Registry.load_dir(mutable_federation, now=spec_now)
        old_key, new_key = registry.member(MemberId("bank.gzrcb")).signing_keys
        assert old_key.key_id == old.signing_keys[0].key_id
        at = spec_now + timedelta(hours=2)
        assert registry.signing_key(old_key.key_id, at=at)[0].id == "bank.gzrcb"
        assert registry.signing_key(new_key.key_id, at=at)[0].id == "bank.gzrcb"
        later = spec_now + timedelta(days=2)
        with pytest.raises(KeyNotValid):
            registry.signing_key(old_key.key_id, at=later)
        registry.signing_key(new_key.key_id, at=later)


class TestRevokedMember:
    def test_member_refused_and_not_listed(self, mutable_federation: Path) -> None:
        revoke_member(mutable_federation, MemberId("carrier.cucc"), reason="contract ended")
        registry = Registry.load_dir(mutable_federation)
        with pytest.raises(MemberRefused, match=r"carrier\.cucc was revoked at .*contract ended"):
            registry.member(MemberId("carrier.cucc"))
        assert "carrier.cucc" not in [m.id for m in registry.members()]
        assert "carrier.cucc" not in [m.id for m in registry.members_of_kind(MemberKind.CARRIER)]
        assert registry.find("carrier.cucc") is not None
        with pytest.raises(MemberRefused, match="was revoked"):
            registry.check_certificate(
                "carrier.cucc", _cert_der(mutable_federation, "carrier.cucc")
            )


class TestCheckCertificate:
    def test_registered_certificate_accepted(
        self, federation_dir: Path, federation_registry: Registry
    ) -> None:
        der = _cert_der(federation_dir, "bank.icbc")
        assert federation_registry.check_certificate("bank.icbc", der).id == "bank.icbc"
        assert federation_registry.member(MemberId("bank.icbc")).cert_fingerprint == (
            cert_fingerprint(der)
        )

    def test_other_members_certificate_refused(
        self, federation_dir: Path, federation_registry: Registry
    ) -> None:
        der = _cert_der(federation_dir, "bank.ccb")
        with pytest.raises(MemberRefused, match="not the one in the member registry"):
            federation_registry.check_certificate("bank.icbc", der)

    def test_certificate_issued_outside_registry_refused(
        self, federation_dir: Path, federation_registry: Registry
    ) -> None:
        # A valid certificate from the real CA key with the right SAN, never registered.
        layout = FederationLayout(federation_dir)
        ca_key = serialization.load_pem_private_key(layout.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca = x509.load_pem_x509_certificate(layout.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        rogue = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(member_uri(MemberId("bank.icbc")))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        rogue.verify_directly_issued_by(ca)
        with pytest.raises(MemberRefused, match="not the one in the member registry"):
            federation_registry.check_certificate(
                "bank.icbc", rogue.public_bytes(serialization.Encoding.DER)
            )

    def test_old_certificate_refused_after_reissue(self, mutable_federation: Path) -> None:
        old_der = _cert_der(mutable_federation, "bank.icbc")
        spec = next(m for m in DEFAULT_MEMBERS if m.id == "bank.icbc")
        issue_member(mutable_federation, spec)
        registry = Registry.load_dir(mutable_federation)
        with pytest.raises(MemberRefused, match="not the one"):
            registry.check_certificate("bank.icbc", old_der)
        new_der = _cert_der(mutable_federation, "bank.icbc")
        assert registry.check_certificate("bank.icbc", new_der).id == "bank.icbc"


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fedgate")
    subparsers = parser.add_subparsers(dest="command", required=True)
    pki_command.register(subparsers)
    registry_command.register(subparsers)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


class TestRegistryCommand:
    def test_init_then_verify_then_tamper(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        directory = tmp_path / "d"
        assert _run(["pki", "init", "--dir", str(directory)]) == 0
        assert _run(["registry", "verify", "--dir", str(directory)]) == 0
        assert "signature OK, serial 1, 14 members" in capsys.readouterr().out

        path = directory / "registry.json"
        data = path.read_bytes()
        start, end = _payload_span(data)
        for i in (start, (start + end) // 2, end - 1):
            corrupt = bytearray(data)
            corrupt[i] ^= 0x01
            path.write_bytes(bytes(corrupt))
            assert _run(["registry", "verify", "--dir", str(directory)]) == 1
            err = capsys.readouterr().err
            assert err.startswith("fedgate: error: ")
            assert "registry.json" in err
        path.write_bytes(data)
        assert _run(["registry", "verify", "--dir", str(directory)]) == 0

    def test_verify_notices_swapped_certificate(
        self, mutable_federation: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        layout = FederationLayout(mutable_federation)
        ccb = layout.tls_cert(MemberId("bank.ccb")).read_bytes()
        layout.tls_cert(MemberId("bank.icbc")).write_bytes(ccb)
        assert _run(["registry", "verify", "--dir", str(mutable_federation)]) == 1
        assert "not the certificate the registry lists for bank.icbc" in capsys.readouterr().err

    def test_verify_missing_directory(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert _run(["registry", "verify", "--dir", str(tmp_path / "none")]) == 1
        assert "fedgate: error: cannot read the administrator public key" in (
            capsys.readouterr().err
        )

    def test_show_table(self, federation_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert _run(["registry", "show", "--dir", str(federation_dir)]) == 0
        out = capsys.readouterr().out
        assert "registry serial 1" in out
        assert "police.gd.afc" in out
        assert "广东省公安厅反诈中心 / Guangdong Provincial Anti-Fraud Centre" in out
        city = next(line for line in out.splitlines() if line.startswith("police.gz.unit "))
        assert city.split()[:3] == ["police.gz.unit", "police", "police.gd.afc"]

    def test_show_json(self, federation_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert _run(["registry", "show", "--dir", str(federation_dir), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["serial"] == 1
        assert len(doc["members"]) == 14

    def test_show_revoked(
        self, mutable_federation: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        revoke_member(mutable_federation, MemberId("bank.abc"), reason="test revocation")
        assert _run(["registry", "show", "--dir", str(mutable_federation)]) == 0
        out = capsys.readouterr().out
        assert "REVOKED" in out
        assert "test revocation" in out


class TestIssuerPrefixes:
    """Banks' issuer prefixes (BINs) are in the signed registry: the chase finds a
    counterparty's bank there, and a card no member issues is outside the federation."""

    def test_each_bank_lists_its_bins(self, federation_registry: Registry) -> None:
        from fedgate.validate import BANK_BINS

        for bank, bins in BANK_BINS.items():
            member = federation_registry.member(bank)
            assert member.issuer_prefixes == bins

    def test_bank_of_account_by_longest_prefix(self, federation_registry: Registry) -> None:
        from fedgate.testing import card_number

        for bank in ("bank.icbc", "bank.ccb", "bank.abc", "bank.gzrcb"):
            found = federation_registry.bank_of_account(card_number(bank, 3))
            assert found is not None
            assert found.id == bank
        assert federation_registry.bank_of_account("6259650000000000000") is None
        assert federation_registry.bank_of_account("") is None

    def test_prefixes_survive_the_signed_round_trip(self, federation_registry: Registry) -> None:
        again = Registry.from_payload(federation_registry.to_payload())
        assert again.member("bank.ccb").issuer_prefixes == ("621700", "622700", "436742")
        assert again.member("carrier.cmcc").issuer_prefixes == ()

    def test_malformed_prefixes_are_refused(self, federation_registry: Registry) -> None:
        import json

        doc = json.loads(federation_registry.to_payload())
        doc["members"][3]["issuer_prefixes"] = ["62a"]
        with pytest.raises(RegistryError, match="issuer_prefixes"):
            Registry.from_payload(json.dumps(doc).encode())
