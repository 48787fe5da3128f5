"""Tests for fedgate.tlogproof: the c2sp.org/tlog-proof@v1 text format and its verification."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.checkpoint import (
    Checkpoint,
    CosignatureSigner,
    cosignatures_in,
    sign_checkpoint,
)
from fedgate.errors import VerificationError
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner, add_signatures, sign_note
from fedgate.tlogproof import (
    HEADER,
    TlogProof,
    parse_tlog_proof,
    verify_tlog_proof,
    verify_tlog_proof_hash,
)

ORIGIN = "example.com/fedgate-log"
LOG = NoteSigner(name=ORIGIN, private_key=Ed25519PrivateKey.generate())
ENTRIES = [b"entry %d" % i for i in range(23)]
TREE = MerkleTree.from_leaf_hashes([leaf_hash(e) for e in ENTRIES])
CHECKPOINT = Checkpoint(origin=ORIGIN, size=TREE.size, root_hash=TREE.root())
NOTE = sign_checkpoint(CHECKPOINT, LOG)
H1 = hashlib.sha256(b"hash1").digest()
H2 = hashlib.sha256(b"hash2").digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def proof_for(index: int, note: str = NOTE) -> TlogProof:
    return TlogProof(index=index, proof=tuple(TREE.inclusion_proof(index)), checkpoint_note=note)


class TestTlogProofFormat:
    def test_marshal_layout(self) -> None:
        p = TlogProof(index=5, proof=(H1, H2), checkpoint_note=NOTE)
        assert p.marshal() == f"{HEADER}\nindex 5\n{b64(H1)}\n{b64(H2)}\n\n{NOTE}"

    def test_marshal_with_extra(self) -> None:
        p = TlogProof.with_extra_data(10, [H1], NOTE, b"extra information")
        assert p.extra == (b64(b"extra information"),)
        assert p.extra_data == b"extra information"
        assert p.marshal() == (
            f"{HEADER}\nextra {b64(b'extra information')}\nindex 10\n{b64(H1)}\n\n{NOTE}"
        )

    def test_empty_proof_and_empty_extra(self) -> None:
        p = TlogProof.with_extra_data(0, [], NOTE, b"")
        assert p.marshal() == f"{HEADER}\nextra \nindex 0\n\n{NOTE}"
        assert parse_tlog_proof(p.marshal()) == p
        assert p.extra_data == b""
        assert TlogProof(index=0, proof=(), checkpoint_note=NOTE).extra_data is None

    def test_round_trip_every_index(self) -> None:
        for i in range(TREE.size):
            p = proof_for(i)
            assert parse_tlog_proof(p.marshal()) == p

    @settings(max_examples=100, deadline=None)
    @given(
        index=st.integers(min_value=0, max_value=(1 << 64) - 1),
        hashes=st.lists(st.binary(min_size=32, max_size=32), max_size=64),
        extra=st.none() | st.binary(max_size=100),
    )
    def test_round_trip_property(
        self, index: int, hashes: list[bytes], extra: bytes | None
    ) -> None:
        if extra is None:
            p = TlogProof(index=index, proof=tuple(hashes), checkpoint_note=NOTE)
        else:
            p = TlogProof.with_extra_data(index, hashes, NOTE, extra)
        assert parse_tlog_proof(p.marshal()) == p

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"index": -1}, "not a uint64"),
            ({"index": 1 << 64}, "not a uint64"),
            ({"proof": (b"short",)}, "proof hash 0 must be 32 bytes"),
            ({"proof": (H1,) * 65}, "at most 64"),
            ({"extra": ("YQ==", "Yg==")}, "at most one extra"),
            ({"extra": ("not base64!",)}, "base64"),
            ({"checkpoint_note": ""}, "must not be empty"),
        ],
    )
    def test_rejects_invalid_values(self, kwargs: dict[str, object], message: str) -> None:
        values: dict[str, object] = {"index": 0, "proof": (), "checkpoint_note": NOTE}
        values.update(kwargs)
        with pytest.raises(ValueError, match=message):
            TlogProof(**values)  # type: ignore[arg-type]


class TestParseTlogProof:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("", "truncated"),
            ("wrong-header\nindex 0\n\n" + NOTE, "first line is not"),
            ("c2sp.org/tlog-proof@v2\nindex 0\n\n" + NOTE, "first line is not"),
            (f"{HEADER}\nextra !!notbase64!!\nindex 0\n\n" + NOTE, "extra data"),
            (f"{HEADER}\nextra YWJj\nextra YWJj\nindex 0\n\n" + NOTE, "missing the index"),
            (f"{HEADER}\n\n\n" + NOTE, "missing the index"),
            (f"{HEADER}\nindex0\n\n" + NOTE, "missing the index"),
            (f"{HEADER}\nindex 0\nextra YWJj\n\n" + NOTE, "proof hash"),
            (f"{HEADER}\nindex notanumber\n\n" + NOTE, "index 'notanumber'"),
            (f"{HEADER}\nindex -5\n\n" + NOTE, "index '-5'"),
            (f"{HEADER}\nindex 05\n\n" + NOTE, "leading zeroes"),
            (f"{HEADER}\nindex \n\n" + NOTE, "index ''"),
            (f"{HEADER}\nindex 18446744073709551616\n\n" + NOTE, "64 bits"),
            (f"{HEADER}\nindex 0\n!!notbase64!!\n\n" + NOTE, "proof hash"),
            (f"{HEADER}\nindex 0\n{b64(bytes(64))}\n\n" + NOTE, "64 bytes, not 32"),
            (f"{HEADER}\nindex 0\n{b64(H1)[:-1]}\n\n" + NOTE, "proof hash"),
            (f"{HEADER}\nindex 0\n{b64(H1)}\n" + (b64(H1) + "\n") * 64 + "\n" + NOTE, "64"),
            (f"{HEADER}\nindex 0\n{b64(H1)}\n", "truncated"),
            (f"{HEADER}\nindex 0\n{b64(H1)}", "truncated"),
            (f"{HEADER}\nindex 0\n\n", "no blank line"),
            (f"{HEADER}\nindex 0\n\n" + NOTE.rstrip("\n"), "no final newline"),
            (f"{HEADER}\nindex 0\n\n{NOTE}trailing\n", "em dash"),
            (f"{HEADER}\r\nindex 0\n\n" + NOTE, "first line is not"),
        ],
    )
    def test_malformed_rejected(self, text: str, message: str) -> None:
        with pytest.raises(VerificationError, match=message):
            parse_tlog_proof(text)


class TestVerifyTlogProof:
    def test_every_leaf_verifies(self) -> None:
        for i, entry in enumerate(ENTRIES):
            p = parse_tlog_proof(proof_for(i).marshal())
            assert verify_tlog_proof(p, entry, LOG.verifier()) == CHECKPOINT
            assert verify_tlog_proof(p, entry, LOG.verifier(), origin=ORIGIN) == CHECKPOINT
            assert verify_tlog_proof_hash(p, leaf_hash(entry), LOG.verifier()) == CHECKPOINT

    def test_single_leaf_log(self) -> None:
        cp = Checkpoint(origin=ORIGIN, size=1, root_hash=leaf_hash(b"only"))
        p = TlogProof(index=0, proof=(), checkpoint_note=sign_checkpoint(cp, LOG))
        assert verify_tlog_proof(parse_tlog_proof(p.marshal()), b"only", LOG.verifier()) == cp

    def test_cosigned_checkpoint(self) -> None:
        w = CosignatureSigner(name="witness.example/w1", private_key=Ed25519PrivateKey.generate())
        cosigned = add_signatures(NOTE, [w.cosign(CHECKPOINT.marshal(), timestamp=1234)])
        p = parse_tlog_proof(proof_for(7, cosigned).marshal())
        assert verify_tlog_proof(p, ENTRIES[7], LOG.verifier()) == CHECKPOINT
        assert cosignatures_in(p.checkpoint_note, [w.verifier()]) == {"witness.example/w1": 1234}

    def test_extra_data_is_not_authenticated(self) -> None:
        p = TlogProof.with_extra_data(3, TREE.inclusion_proof(3), NOTE, b"anything")
        q = TlogProof.with_extra_data(3, TREE.inclusion_proof(3), NOTE, b"something else")
        assert verify_tlog_proof(p, ENTRIES[3], LOG.verifier()) == CHECKPOINT
        assert verify_tlog_proof(q, ENTRIES[3], LOG.verifier()) == CHECKPOINT

    def test_corruptions_rejected(self) -> None:
        verifier = LOG.verifier()
        for i in range(TREE.size):
            good = proof_for(i)
            proof = good.proof
            probes: list[tuple[TlogProof, bytes, str]] = [
                (good, b"entry X", "does not match the root"),
                (good, ENTRIES[(i + 1) % len(ENTRIES)], "does not match the root"),
            ]
            for wrong_index in {i - 1, i + 1, i ^ 2, i ^ 8, TREE.size, TREE.size + 5}:
                if wrong_index >= 0 and wrong_index != i:
                    bad = TlogProof(index=wrong_index, proof=proof, checkpoint_note=NOTE)
                    probes.append((bad, ENTRIES[i], "."))
            variants = [proof[:-1], proof[1:], (*proof, H1), (H1, *proof)]
            if len(proof) > 1:
                variants.append((proof[1], proof[0], *proof[2:]))
            for k in range(len(proof)):
                for bit in (0, 9, 130, 255):
                    raw = bytearray(proof[k])
                    raw[bit // 8] ^= 1 << (bit % 8)
                    variants.append((*proof[:k], bytes(raw), *proof[k + 1 :]))
            for v in variants:
                probes.append((TlogProof(index=i, proof=v, checkpoint_note=NOTE), ENTRIES[i], "."))
            for p, entry, message in probes:
                with pytest.raises(VerificationError, match=message):
                    verify_tlog_proof(parse_tlog_proof(p.marshal()), entry, verifier)

    def test_checkpoint_tampering_rejected(self) -> None:
        verifier = LOG.verifier()
        p = proof_for(4)
        other_log = NoteSigner(name=ORIGIN, private_key=Ed25519PrivateKey.generate())
        forged = TlogProof(
            index=4, proof=p.proof, checkpoint_note=sign_checkpoint(CHECKPOINT, other_log)
        )
        with pytest.raises(VerificationError, match="no signature from a known key"):
            verify_tlog_proof(forged, ENTRIES[4], verifier)
        for old, new in ((f"\n{TREE.size}\n", f"\n{TREE.size + 1}\n"), (b64(TREE.root()), b64(H1))):
            tampered = TlogProof(index=4, proof=p.proof, checkpoint_note=NOTE.replace(old, new, 1))
            with pytest.raises(VerificationError, match="invalid signature"):
                verify_tlog_proof(tampered, ENTRIES[4], verifier)
        with pytest.raises(VerificationError, match="not the expected origin"):
            verify_tlog_proof(p, ENTRIES[4], verifier, origin="example.com/other")
        # One blank line too many: the note text then starts with an empty line.
        extra_blank = p.marshal().replace("\n\n", "\n\n\n", 1)
        with pytest.raises(VerificationError, match="invalid signature"):
            verify_tlog_proof(parse_tlog_proof(extra_blank), ENTRIES[4], verifier)
        # A validly signed note that is not a checkpoint.
        junk = TlogProof(index=0, proof=(), checkpoint_note=sign_note("junk\n", [LOG]))
        with pytest.raises(VerificationError, match="malformed checkpoint"):
            verify_tlog_proof(junk, ENTRIES[0], verifier)

    def test_text_level_corruption_rejected(self) -> None:
        verifier = LOG.verifier()
        text = proof_for(9).marshal()
        head, _, note = text.partition("\n\n")
        lines = head.split("\n")
        for k in range(2, len(lines)):  # each proof hash line: flip one base64 character
            c = lines[k][5]
            mangled = lines.copy()
            mangled[k] = lines[k][:5] + ("A" if c != "A" else "B") + lines[k][6:]
            corrupted = "\n".join(mangled) + "\n\n" + note
            with pytest.raises(VerificationError, match="does not match the root"):
                verify_tlog_proof(parse_tlog_proof(corrupted), ENTRIES[9], verifier)
        dropped = "\n".join(lines[:-1]) + "\n\n" + note
        with pytest.raises(VerificationError, match="too few hashes"):
            verify_tlog_proof(parse_tlog_proof(dropped), ENTRIES[9], verifier)
