"""Evidence bundles: built from a real tree and real signatures, verified with public keys only,
and every corruption refused."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedgate.audit_entry import RequestLeg, ResponseLeg, encode_entry
from fedgate.checkpoint import Checkpoint, CosignatureSigner, sign_checkpoint
from fedgate.envelope import Domain, Signer, sign_envelope
from fedgate.errors import KeyNotValid, RegistryError, UnknownKey, VerificationError
from fedgate.evidence import (
    HistoricalKeys,
    build_bundle,
    check_request_leg,
    check_response_leg,
    log_verifiers,
    verify_bundle,
)
from fedgate.keys import key_id_of, load_private_key
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner, add_signatures
from fedgate.pki import FederationLayout, init_federation, revoke_key
from fedgate.registry import Registry, WitnessPolicy
from fedgate.testing import card_number, valid_request
from fedgate.types import MemberId
from fedgate.v1 import request_pb2

ORIGIN = "fedgate.test/gateway/shard-0"
POLICE, BANK = MemberId("police.gd.afc"), MemberId("bank.icbc")


@pytest.fixture(scope="module")
def fed_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_federation(
        tmp_path_factory.mktemp("evidence") / "fed", now=datetime.now(UTC) - timedelta(days=1)
    )


def _key(fed: Path, member: str) -> Signer:
    return Signer.from_key(load_private_key(FederationLayout(fed).signing_key(MemberId(member))))


@dataclass
class Exchange:
    request: RequestLeg
    response: ResponseLeg


def exchange(
    fed: Path,
    registry: Registry,
    *,
    at: datetime,
    request_index: int,
    bound: bool = True,
    status: str = "ok",
    responder_key: str = BANK,
) -> Exchange:
    account = card_number(BANK, 3)
    request = valid_request("stop_payment", now=at, serial=3, account_number=account)
    body = request.SerializeToString()
    envelope = sign_envelope(body, _key(fed, POLICE), Domain.REQUEST)
    leg = RequestLeg(
        envelope=envelope.SerializeToString(),
        peer=POLICE,
        peer_cert_sha256=registry.member(POLICE).cert_fingerprint,
        received_at=at,
        decision="allowed",
        rule="p, police_investigator, police, stop_payment, bank, allow",
        request_id=request.request_id,
        requesting_agency=POLICE,
        officer_id=request.officer.id,
        case_number=request.case.case_number,
        action="stop_payment",
        target_agency=BANK,
        subjects=(account,),
    )
    response = request_pb2.Response(
        request_id=request.request_id,
        request_hash=hashlib.sha256(body if bound else body + b"x").digest(),
        responder=BANK,
        status=request_pb2.RESPONSE_STATUS_OK,
    )
    response.answered_at.FromDatetime(at)
    answer = sign_envelope(response.SerializeToString(), _key(fed, responder_key), Domain.RESPONSE)
    return Exchange(
        leg,
        ResponseLeg(
            request_id=request.request_id,
            request_leaf_index=request_index,
            responder=BANK,
            received_at=at,
            status=status,
            response_hash=hashlib.sha256(answer.body).digest(),
            responder_signature=answer.signature,
            responder_key_id=answer.key_id,
            response_envelope=answer.SerializeToString(),
        ),
    )


def bundle_for(
    fed: Path,
    x: Exchange,
    *,
    log_key: str = "gateway",
    cosign: bool = True,
    response_only: bool = False,
) -> bytes:
    """A log of 9 entries: filler, the request at 5, more filler, the response at 7 (the
    bundle of the response alone with ``response_only``)."""
    leaves = [f"filler {i}".encode() for i in range(9)]
    leaves[5], leaves[7] = encode_entry(x.request), encode_entry(x.response)
    tree = MerkleTree.from_leaf_hashes(leaf_hash(leaf) for leaf in leaves)
    signer = NoteSigner(name=ORIGIN, private_key=_key(fed, log_key).key)
    note = sign_checkpoint(Checkpoint(ORIGIN, 9, tree.root()), signer)
    if cosign:
        witness = CosignatureSigner(name="pboc.gz", private_key=_key(fed, "pboc.gz").key)
        note = add_signatures(note, [witness.cosign(note.split("\n\n")[0] + "\n", timestamp=1)])
    return build_bundle(
        origin=ORIGIN,
        index=7,
        entries=[(7, leaves[7])] if response_only else [(5, leaves[5]), (7, leaves[7])],
        checkpoint=note,
        tree_size=9,
        inclusion_proof=tree.inclusion_proof,
    )


@pytest.fixture
def registry(fed_dir: Path) -> Registry:
    return Registry.load_dir(fed_dir)


@pytest.fixture
def good(fed_dir: Path, registry: Registry) -> bytes:
    return bundle_for(fed_dir, exchange(fed_dir, registry, at=datetime.now(UTC), request_index=5))


class TestVerifyBundle:
    def test_a_bundle_verifies_and_says_what_it_checked(
        self, good: bytes, registry: Registry
    ) -> None:
        report = verify_bundle(good, registry)
        assert (report.origin, report.index, report.checkpoint.size) == (ORIGIN, 7, 9)
        assert report.witnesses == ("pboc.gz",)
        assert report.entries == ((5, "RequestLeg"), (7, "ResponseLeg"))
        text = "\n".join(report.checks)
        assert "signed by police.gd.afc" in text
        assert "signed by bank.icbc and bound to the request" in text

    def test_only_public_keys_are_needed(self, good: bytes, fed_dir: Path, tmp_path: Path) -> None:
        (tmp_path / "trust").mkdir()
        for name in ("trust/admin.pub", "registry.json"):
            shutil.copy(fed_dir / name, tmp_path / name)
        assert verify_bundle(good, Registry.load_dir(tmp_path)).index == 7

    def test_every_changed_entry_byte_is_caught(self, good: bytes, registry: Registry) -> None:
        doc = json.loads(good)
        leaf = base64.b64decode(doc["entries"][1]["entry"])
        for at in range(0, len(leaf), max(1, len(leaf) // 40)):
            changed = leaf[:at] + bytes([leaf[at] ^ 0x80]) + leaf[at + 1 :]
            doc["entries"][1]["entry"] = base64.b64encode(changed).decode()
            with pytest.raises(VerificationError, match="entry 7 is not proved included"):
                verify_bundle(json.dumps(doc).encode(), registry)

    def test_a_checkpoint_not_signed_by_the_gateway_is_refused(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(fed_dir, registry, at=datetime.now(UTC), request_index=5)
        with pytest.raises(VerificationError, match="not proved included"):
            verify_bundle(bundle_for(fed_dir, x, log_key="bank.icbc"), registry)

    def test_a_response_bound_to_another_request_is_refused(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(fed_dir, registry, at=datetime.now(UTC), request_index=5, bound=False)
        with pytest.raises(VerificationError, match="request_hash"):
            verify_bundle(bundle_for(fed_dir, x), registry)

    def test_a_response_signed_by_someone_else_is_refused_unless_it_was_a_node_fault(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        at = datetime.now(UTC)
        x = exchange(fed_dir, registry, at=at, request_index=5, responder_key="bank.ccb")
        with pytest.raises(VerificationError, match=r"signed by bank\.ccb"):
            verify_bundle(bundle_for(fed_dir, x), registry)
        fault = exchange(
            fed_dir,
            registry,
            at=at,
            request_index=5,
            responder_key="bank.ccb",
            status="node_fault",
        )
        report = verify_bundle(bundle_for(fed_dir, fault), registry)
        assert any("node fault" in c for c in report.checks)

    def test_a_response_naming_the_wrong_request_entry_is_refused(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(fed_dir, registry, at=datetime.now(UTC), request_index=6)
        with pytest.raises(VerificationError, match="names request entry 6, which the bundle"):
            verify_bundle(bundle_for(fed_dir, x), registry)

    def test_malformed_bundles_are_refused(self, good: bytes, registry: Registry) -> None:
        other_index = json.loads(good)
        other_index["index"] = 8
        for bad, why in (
            (b"not json", "malformed"),
            (good.replace(b"fedgate-evidence/v1", b"fedgate-evidence/v9"), "malformed"),
            (json.dumps(other_index).encode(), "does not contain entry 8"),
        ):
            with pytest.raises(VerificationError, match=why):
                verify_bundle(bad, registry)

    def test_bundle_fields_of_the_wrong_type_are_refused(
        self, good: bytes, registry: Registry
    ) -> None:
        for field, value in (("tlog_proof", 5), ("entry", ["x"]), ("entry", "not base64!")):
            doc = json.loads(good)
            doc["entries"][0][field] = value
            with pytest.raises(VerificationError, match="malformed evidence bundle"):
                verify_bundle(json.dumps(doc).encode(), registry)


class TestAnswerLoggedInAnotherShard:
    """A ticket answered through another gateway instance: the response leg names its request
    leg in another shard (``request_origin``); its bundle holds it alone."""

    def test_its_signature_verifies_and_the_request_shard_is_named(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(fed_dir, registry, at=datetime.now(UTC), request_index=12)
        foreign = replace(x, response=replace(
            x.response, request_origin="fedgate.test/gateway/shard-a"
        ))  # fmt: skip
        report = verify_bundle(bundle_for(fed_dir, foreign, response_only=True), registry)
        assert any(
            "signed by bank.icbc" in c
            and "entry 12 of fedgate.test/gateway/shard-a, another shard" in c
            for c in report.checks
        ), report.checks

    def test_a_foreign_answer_signed_by_someone_else_is_refused(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(
            fed_dir, registry, at=datetime.now(UTC), request_index=12, responder_key="bank.ccb"
        )
        foreign = replace(x, response=replace(
            x.response, request_origin="fedgate.test/gateway/shard-a"
        ))  # fmt: skip
        with pytest.raises(VerificationError, match=r"signed by bank\.ccb"):
            verify_bundle(bundle_for(fed_dir, foreign, response_only=True), registry)


class TestWitnessPolicy:
    """Signed-note semantics for cosignatures, and the registry's k-of-n witness policy."""

    def test_the_default_federation_requires_1_of_its_2_witnesses(self, registry: Registry) -> None:
        assert registry.witness_policy == WitnessPolicy(
            quorum=1, witnesses=(MemberId("pboc.gz"), MemberId("audit.office"))
        )

    def test_a_bundle_without_cosignatures_is_refused(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(fed_dir, registry, at=datetime.now(UTC), request_index=5)
        with pytest.raises(VerificationError, match="cosigned by 0 of the witnesses"):
            verify_bundle(bundle_for(fed_dir, x, cosign=False), registry)

    def test_an_altered_cosignature_by_a_known_witness_is_an_error(
        self, good: bytes, registry: Registry
    ) -> None:
        doc = json.loads(good)
        for entry in doc["entries"]:
            lines = entry["tlog_proof"].split("\n")
            at = next(i for i, line in enumerate(lines) if line.startswith("— pboc.gz "))
            name, key_and_sig = lines[at].rsplit(" ", 1)
            raw = bytearray(base64.b64decode(key_and_sig))
            raw[-1] ^= 1
            lines[at] = f"{name} {base64.b64encode(bytes(raw)).decode()}"
            entry["tlog_proof"] = "\n".join(lines)
        with pytest.raises(VerificationError, match=r"cosignature of witness pboc\.gz does not"):
            verify_bundle(json.dumps(doc).encode(), registry)

    def test_one_cosignature_is_below_a_2_of_2_policy(
        self, fed_dir: Path, good: bytes, registry: Registry
    ) -> None:
        strict = replace(
            registry,
            witness_policy=WitnessPolicy(
                quorum=2, witnesses=(MemberId("pboc.gz"), MemberId("audit.office"))
            ),
        )
        assert verify_bundle(good, registry).witnesses == ("pboc.gz",)
        with pytest.raises(VerificationError, match="requires 2 of 2"):
            verify_bundle(good, strict)

    def test_a_policy_naming_a_member_without_the_witness_role_is_refused(
        self, registry: Registry
    ) -> None:
        with pytest.raises(RegistryError, match="not a member with the witness role"):
            replace(registry, witness_policy=WitnessPolicy(quorum=1, witnesses=(BANK,)))
        with pytest.raises(RegistryError, match="quorum 3"):
            WitnessPolicy(quorum=3, witnesses=(MemberId("pboc.gz"), MemberId("audit.office")))

    def test_the_policy_is_signed_and_survives_a_reissue(
        self, fed_dir: Path, tmp_path: Path
    ) -> None:
        fed = tmp_path / "fed"
        shutil.copytree(fed_dir, fed)
        revoke_key(fed, key_id_of(_key(fed, POLICE).key), reason="test")
        reloaded = Registry.load_dir(fed)
        assert reloaded.serial == 2
        assert reloaded.witness_policy is not None
        assert reloaded.witness_policy.quorum == 1


class TestHistoricalKeys:
    def test_a_key_revoked_after_it_signed_still_verifies_and_before_does_not(
        self, fed_dir: Path, tmp_path: Path
    ) -> None:
        fed = tmp_path / "fed"
        shutil.copytree(fed_dir, fed)
        now = datetime.now(UTC)
        police_key = key_id_of(_key(fed, POLICE).key)
        revoke_key(fed, police_key, reason="laptop stolen", now=now - timedelta(minutes=30))
        registry = Registry.load_dir(fed)
        keys = HistoricalKeys(registry)
        member, _ = keys.key_at(police_key, now - timedelta(hours=2))
        assert member.id == POLICE
        with pytest.raises(KeyNotValid, match="revoked"):
            keys.key_at(police_key, now)
        earlier = exchange(fed, registry, at=now - timedelta(hours=2), request_index=5)
        assert verify_bundle(bundle_for(fed, earlier), registry).index == 7
        later = exchange(fed, registry, at=now, request_index=5)
        with pytest.raises(VerificationError, match="revoked"):
            verify_bundle(bundle_for(fed, later), registry)

    def test_unknown_keys_and_times_outside_the_window(self, registry: Registry) -> None:
        keys = HistoricalKeys(registry)
        with pytest.raises(UnknownKey):
            keys.key_at("00" * 16, datetime.now(UTC))
        police = registry.member(POLICE).signing_keys[0]
        with pytest.raises(KeyNotValid, match="not valid"):
            keys.key_at(police.key_id, police.not_before - timedelta(seconds=1))

    def test_log_keys_are_the_gateways_under_the_origin(self, registry: Registry) -> None:
        verifiers = log_verifiers(registry, ORIGIN)
        assert [v.name for v in verifiers] == [ORIGIN]


class TestCheckLegs:
    def test_a_signed_time_out_of_range_is_a_verification_error(
        self, fed_dir: Path, registry: Registry
    ) -> None:
        x = exchange(fed_dir, registry, at=datetime.now(UTC), request_index=5)
        request = valid_request("stop_payment", now=datetime.now(UTC), serial=4)
        request.issued_at.seconds = 1 << 62
        envelope = sign_envelope(request.SerializeToString(), _key(fed_dir, POLICE), Domain.REQUEST)
        leg = replace(x.request, envelope=envelope.SerializeToString(), decision="refused")
        with pytest.raises(VerificationError, match="issued_at is not a valid time"):
            check_request_leg(leg, HistoricalKeys(registry))
        response = request_pb2.Response(request_id=x.response.request_id, responder=BANK)
        response.answered_at.nanos = 1 << 30
        answer = sign_envelope(response.SerializeToString(), _key(fed_dir, BANK), Domain.RESPONSE)
        bad = replace(x.response, response_envelope=answer.SerializeToString())
        with pytest.raises(VerificationError, match="answered_at is not a valid time"):
            check_response_leg(bad, HistoricalKeys(registry), request_body=None)
