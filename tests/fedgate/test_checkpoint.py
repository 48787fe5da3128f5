"""Tests for fedgate.checkpoint: checkpoint text, signed checkpoints, witness cosignatures."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.checkpoint import (
    MAX_TIMESTAMP,
    Checkpoint,
    CheckpointSigner,
    CosignatureSigner,
    CosignatureVerifier,
    cosignature_message,
    cosignatures_in,
    open_checkpoint,
    parse_checkpoint,
    sign_checkpoint,
    verify_cosignatures,
)
from fedgate.errors import VerificationError
from fedgate.keys import raw_public_key
from fedgate.merkle import EMPTY_ROOT, MAX_TREE_SIZE, MerkleTree, leaf_hash
from fedgate.note import (
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    parse_note,
    sign_note,
)

# A real sum.golang.org checkpoint, from transparency-dev/formats log/note_test.go.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_NOTE = (
    "go.sum database tree\n"
    "6476701\n"
    "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk=\n"
    "\n"
    "\u2014 sum.golang.org Az3grsLX85Gz+s1SiTbgkuqxgItqFq7gsMUEyVnrsa9LM7Us9S+1xbFIGu95949rj4nPRYf"
    "vimWEPWL+o3GeoWwOoAw=\n"
)
# Key pairs from the same file (Go skey / vkey), to cross-check key ids.
GO_KEY_PAIRS = [
    (
        "PRIVATE+KEY+Log+2271c621+AdEIq9FLRQni54Wg68T96VJO+iayOaulswav2DUMKgvQ",
        "Log+2271c621+AemuH5ooBpEPcr+W8onrjA1NfuzBVHdezakU81Ekarvs",
    ),
    (
        "PRIVATE+KEY+Known+451c786d+AQPRoE2+Z+Ed1HaHBA9F/FfracvcZ2rDU39kCecMEoci",
        "Known+451c786d+AXAQ0T7lbwuY4ABJ9/MYY9bWV3hmSyOGVt2x42NkmdUH",
    ),
    (
        "PRIVATE+KEY+KnownAgain+4893b26c+ARhZda/l25zjGZswYLDZsLNRzNpmv5wYTN9IoTr1OJ2+",
        "KnownAgain+4893b26c+AQ+LR7BFF/F/dkpIBjBpSvT0crkteizuUkavAoGeaYMj",
    ),
]
# The example of c2sp.org/tlog-cosignature (keys not published: parse only).
SPEC_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_COSIGNED = (
    SPEC_BODY + "\n"
    "\u2014 example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/"
    "Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJ"
    "sX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
)
# A published Ed25519 cosignature (type 0x04) vkey, from transparency-dev/formats.
REMORA_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"

ROOT = hashlib.sha256(b"root").digest()


def seed_signer(skey: str) -> NoteSigner:
    _, _, name, _, key64 = skey.split("+", 4)
    raw = base64.b64decode(key64)
    return NoteSigner(name=name, private_key=Ed25519PrivateKey.from_private_bytes(raw[1:]))


def log_signer(name: str = "example.com/log") -> NoteSigner:
    return NoteSigner(name=name, private_key=Ed25519PrivateKey.generate())


def witness(name: str) -> CosignatureSigner:
    return CosignatureSigner(name=name, private_key=Ed25519PrivateKey.generate())


class TestCheckpoint:
    def test_marshal_spec_example(self) -> None:
        cp = Checkpoint(
            origin="example.com/behind-the-sofa",
            size=20852163,
            root_hash=base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
        )
        assert cp.marshal() == SPEC_BODY
        assert parse_checkpoint(SPEC_BODY) == cp

    def test_extensions_round_trip(self) -> None:
        cp = Checkpoint("o", 0, EMPTY_ROOT, ("ext one", "ext two"))
        assert cp.marshal().endswith("\next one\next two\n")
        assert parse_checkpoint(cp.marshal()) == cp

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"origin": ""}, "origin must not be empty"),
            ({"origin": "a\nb"}, "newlines"),
            ({"size": -1}, "not a uint64"),
            ({"size": 1 << 64}, "not a uint64"),
            ({"root_hash": b"short"}, "32 bytes"),
            ({"extensions": ("",)}, "extension line must not be empty"),
            ({"extensions": ("a\nb",)}, "newlines"),
        ],
    )
    def test_rejects_invalid_values(self, kwargs: dict[str, object], message: str) -> None:
        values: dict[str, object] = {"origin": "o", "size": 1, "root_hash": ROOT}
        values.update(kwargs)
        with pytest.raises(ValueError, match=message):
            Checkpoint(**values)  # type: ignore[arg-type]


class TestParseCheckpoint:
    def test_origin_may_contain_spaces(self) -> None:
        cp = parse_checkpoint(parse_note(SUMDB_NOTE).text)
        assert cp.origin == "go.sum database tree"
        assert cp.size == 6476701

    def test_largest_size(self) -> None:
        text = f"o\n{(1 << 64) - 1}\n{base64.b64encode(ROOT).decode()}\n"
        assert parse_checkpoint(text).size == (1 << 64) - 1

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("Head\n9944\n", "fewer than three lines"),
            ("\n9944\n" + base64.b64encode(ROOT).decode() + "\n", "empty origin"),
            ("Log\n123\n" + base64.b64encode(ROOT).decode(), "does not end with a newline"),
            ("Log\nbananas\n" + base64.b64encode(ROOT).decode() + "\n", "size 'bananas'"),
            ("Log\n-34\n" + base64.b64encode(ROOT).decode() + "\n", "size '-34'"),
            ("Log\n+34\n" + base64.b64encode(ROOT).decode() + "\n", "size '\\+34'"),
            ("Log\n034\n" + base64.b64encode(ROOT).decode() + "\n", "leading zeroes"),
            ("Log\n 34\n" + base64.b64encode(ROOT).decode() + "\n", "leading zeroes"),
            ("Log\n\u0661\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),
            ("Log\n18446744073709551616\n" + base64.b64encode(ROOT).decode() + "\n", "64 bits"),
            ("Log\n123\nThisIsn'tBase64\n", "root hash"),
            ("Log\n123\nYmFuYW5hcw==\n", "root hash is 7 bytes"),
            ("Log\n123\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n", "root hash"),
            ("Log\n1\nmb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wl=\n", "not canonical"),
            ("Log\n1\n" + base64.b64encode(ROOT).decode() + "\n\n\n", "empty extension"),
            ("Log\n1\n" + base64.b64encode(ROOT).decode() + "\na\n\nb\n", "empty extension"),
            ("Lo\tg\n1\n" + base64.b64encode(ROOT).decode() + "\n", "control characters"),
        ],
    )
    def test_malformed_rejected(self, text: str, message: str) -> None:
        with pytest.raises(VerificationError, match=message):
            parse_checkpoint(text)


class TestSignedCheckpoint:
    def test_sumdb_vector(self) -> None:
        verifier = NoteVerifier.from_vkey(SUMDB_VKEY)
        cp = open_checkpoint(SUMDB_NOTE, verifier)
        assert cp.origin == "go.sum database tree"
        assert cp.size == 6476701
        assert base64.b64encode(cp.root_hash).decode() == (
            "mb8QLQIs0Z0yP5Cstq6guj87oXWeC9gEM8oVikmm9Wk="
        )
        assert open_checkpoint(SUMDB_NOTE, verifier, origin="go.sum database tree") == cp
        with pytest.raises(VerificationError, match="not the expected origin"):
            open_checkpoint(SUMDB_NOTE, verifier, origin="Go rocks but I might have the wrong ID")
        tampered = SUMDB_NOTE.replace("6476701", "6476702")
        with pytest.raises(VerificationError, match=r"invalid signature for key sum\.golang\.org"):
            open_checkpoint(tampered, verifier)

    @pytest.mark.parametrize(("skey", "vkey"), GO_KEY_PAIRS)
    def test_go_key_pairs_give_same_vkey(self, skey: str, vkey: str) -> None:
        assert seed_signer(skey).verifier().vkey() == vkey

    def test_round_trip(self) -> None:
        signer = log_signer()
        tree = MerkleTree.from_leaf_hashes([leaf_hash(b"%d" % i) for i in range(10)])
        cp = Checkpoint(origin=signer.name, size=tree.size, root_hash=tree.root())
        note = sign_checkpoint(cp, signer)
        assert note.startswith(cp.marshal() + "\n\u2014 example.com/log ")
        assert open_checkpoint(note, signer.verifier(), origin=signer.name) == cp

    def test_wrong_key_or_tampering_rejected(self) -> None:
        signer = log_signer()
        cp = Checkpoint(origin=signer.name, size=5, root_hash=ROOT, extensions=("x",))
        note = sign_checkpoint(cp, signer)
        with pytest.raises(VerificationError, match="no signature from a known key"):
            open_checkpoint(note, log_signer().verifier())
        with pytest.raises(VerificationError, match="no signature from a known key"):
            open_checkpoint(note, log_signer("other").verifier())
        for old, new in (("\n5\n", "\n6\n"), ("\nx\n", "\ny\n"), (signer.name, "example.com/lag")):
            with pytest.raises(VerificationError, match="invalid signature"):
                open_checkpoint(note.replace(old, new, 1), signer.verifier())

    def test_signed_non_checkpoint_rejected(self) -> None:
        signer = log_signer()
        note = sign_note("if this is a valid checkpoint then I'll eat my hat\n", [signer])
        with pytest.raises(VerificationError, match="fewer than three lines"):
            open_checkpoint(note, signer.verifier())

    def test_cosignatures_do_not_disturb_the_log_signature(self) -> None:
        signer, w = log_signer(), witness("witness.example/w1")
        cp = Checkpoint(origin=signer.name, size=1, root_hash=ROOT)
        note = sign_checkpoint(cp, signer)
        cosigned = add_signatures(note, [w.cosign(cp.marshal(), timestamp=1700000000)])
        assert open_checkpoint(cosigned, signer.verifier()) == cp


class TestCheckpointSigner:
    SIGNER = log_signer("example.com/log")

    @settings(max_examples=200, deadline=None)
    @given(
        origin=st.text(st.characters(min_codepoint=0x20, blacklist_categories=("Cs",)), min_size=1),
        size=st.integers(min_value=0, max_value=MAX_TREE_SIZE),
        root=st.binary(min_size=32, max_size=32),
    )
    def test_byte_for_byte_sign_checkpoint(self, origin: str, size: int, root: bytes) -> None:
        note = CheckpointSigner(origin, self.SIGNER).sign(size, root)
        assert note == sign_checkpoint(Checkpoint(origin, size, root), self.SIGNER)
        assert open_checkpoint(note, self.SIGNER.verifier(), origin=origin) == Checkpoint(
            origin, size, root
        )

    def test_another_key_does_not_open_it(self) -> None:
        note = CheckpointSigner("example.com/log", self.SIGNER).sign(7, ROOT)
        with pytest.raises(VerificationError, match="no signature from a known key"):
            open_checkpoint(note, log_signer().verifier())
        with pytest.raises(VerificationError, match="invalid signature"):
            open_checkpoint(note.replace("\n7\n", "\n8\n", 1), self.SIGNER.verifier())

    @pytest.mark.parametrize(
        ("origin", "message"),
        [("", "must not be empty"), ("a\nb", "newlines"), ("a\tb", "control characters")],
    )
    def test_refuses_an_origin_a_checkpoint_cannot_carry(self, origin: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            CheckpointSigner(origin, self.SIGNER)

    @pytest.mark.parametrize(
        ("size", "root"), [(-1, ROOT), (MAX_TREE_SIZE + 1, ROOT), (1, ROOT[:31]), (1, b"")]
    )
    def test_refuses_a_size_or_root_a_checkpoint_cannot_carry(self, size: int, root: bytes) -> None:
        with pytest.raises(ValueError, match="no checkpoint of size"):
            CheckpointSigner("example.com/log", self.SIGNER).sign(size, root)


class TestCosignature:
    def test_known_answer(self) -> None:
        # Ed25519 is deterministic: rebuild the spec's signed message and key id by hand.
        key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
        w = CosignatureSigner(name="witness.example.com/w1", private_key=key)
        sig = w.cosign(SPEC_BODY, timestamp=1679315147)
        message = b"cosignature/v1\ntime 1679315147\n" + SPEC_BODY.encode()
        assert cosignature_message(SPEC_BODY, 1679315147) == message
        expected_id = hashlib.sha256(
            b"witness.example.com/w1\n\x04" + raw_public_key(key)
        ).digest()[:4]
        assert sig.key_hash == expected_id
        assert sig.signature == (1679315147).to_bytes(8, "big") + key.sign(message)
        assert w.verifier().verify(SPEC_BODY, sig) == 1679315147

    def test_spec_example_line_layout(self) -> None:
        # The spec's witness line: 4-byte key id, 8-byte timestamp, 64-byte signature.
        note = parse_note(SPEC_COSIGNED)
        line = note.signatures[1]
        assert line.name == "witness.example.com/w1"
        assert len(line.signature) == 8 + 64
        assert int.from_bytes(line.signature[:8], "big") == 1679315147
        # Without the witness's key it is an unknown signature: nothing counts.
        assert cosignatures_in(SPEC_COSIGNED, [witness("witness.example.com/w1").verifier()]) == {}

    def test_vkey_round_trip_and_type(self) -> None:
        verifier = CosignatureVerifier.from_vkey(REMORA_VKEY)
        assert verifier.name == "remora.n621.de"
        assert verifier.vkey() == REMORA_VKEY
        w = witness("w")
        assert CosignatureVerifier.from_vkey(w.verifier().vkey()).key_hash == w.key_hash
        with pytest.raises(ValueError, match="signature type 0x01, expected 0x04"):
            CosignatureVerifier.from_vkey(SUMDB_VKEY)

    def test_cosignature_key_id_differs_from_note_key_id(self) -> None:
        key = Ed25519PrivateKey.generate()
        note_signer = NoteSigner(name="w", private_key=key)
        cosigner = CosignatureSigner(name="w", private_key=key)
        assert note_signer.key_hash != cosigner.key_hash

    def test_round_trip_with_extension_lines(self) -> None:
        w = witness("w")
        body = Checkpoint("o", 3, ROOT, ("ext",)).marshal()
        sig = w.cosign(body, timestamp=0)
        assert w.verifier().verify(body, sig) == 0
        sig = w.cosign(body, timestamp=MAX_TIMESTAMP)
        assert w.verifier().verify(body, sig) == MAX_TIMESTAMP
        with pytest.raises(VerificationError, match="invalid cosignature by w"):
            w.verifier().verify(body.replace("ext", "exu"), sig)

    def test_rejects_wrong_timestamp_body_or_key(self) -> None:
        w = witness("w")
        body = Checkpoint("o", 3, ROOT).marshal()
        sig = w.cosign(body, timestamp=1700000000)
        verifier = w.verifier()
        for ts in (1700000001, 1699999999, 0):
            retimed = NoteSignature(
                sig.name, sig.key_hash, ts.to_bytes(8, "big") + sig.signature[8:]
            )
            with pytest.raises(VerificationError, match="invalid cosignature"):
                verifier.verify(body, retimed)
        for other in (
            Checkpoint("o", 4, ROOT),
            Checkpoint("p", 3, ROOT),
            Checkpoint("o", 3, EMPTY_ROOT),
        ):
            with pytest.raises(VerificationError, match="invalid cosignature"):
                verifier.verify(other.marshal(), sig)
        impostor = CosignatureVerifier(
            name="w", public_key=Ed25519PrivateKey.generate().public_key()
        )
        with pytest.raises(VerificationError, match="is not from"):
            impostor.verify(body, sig)
        for i in range(8, 72):
            raw = bytearray(sig.signature)
            raw[i] ^= 0x10
            with pytest.raises(VerificationError, match="invalid cosignature"):
                verifier.verify(body, NoteSignature(sig.name, sig.key_hash, bytes(raw)))

    def test_rejects_malformed(self) -> None:
        w = witness("w")
        body = Checkpoint("o", 3, ROOT).marshal()
        sig = w.cosign(body, timestamp=5)
        verifier = w.verifier()
        short = NoteSignature(sig.name, sig.key_hash, sig.signature[:-1])
        with pytest.raises(VerificationError, match="71 bytes, not 72"):
            verifier.verify(body, short)
        too_late = NoteSignature(
            sig.name, sig.key_hash, (1 << 63).to_bytes(8, "big") + sig.signature[8:]
        )
        with pytest.raises(VerificationError, match="above 2\\^63 - 1"):
            verifier.verify(body, too_late)
        with pytest.raises(VerificationError, match="fewer than three lines"):
            verifier.verify("o\n3\n", sig)

    def test_cosign_checks_its_input(self) -> None:
        w = witness("w")
        with pytest.raises(ValueError, match="outside"):
            w.cosign(Checkpoint("o", 3, ROOT).marshal(), timestamp=-1)
        with pytest.raises(ValueError, match="outside"):
            w.cosign(Checkpoint("o", 3, ROOT).marshal(), timestamp=MAX_TIMESTAMP + 1)
        with pytest.raises(VerificationError, match="malformed checkpoint"):
            w.cosign("not a checkpoint\n", timestamp=1)


class TestCosignaturesIn:
    def test_collects_valid_cosignatures_only(self) -> None:
        log = log_signer()
        w1, w2, w3, stranger = witness("w1"), witness("w2"), witness("w3"), witness("x")
        cp = Checkpoint(origin=log.name, size=7, root_hash=ROOT)
        body = cp.marshal()
        good1 = w1.cosign(body, timestamp=100)
        good2 = w2.cosign(body, timestamp=200)
        forged3 = NoteSignature(w3.name, w3.key_hash, (300).to_bytes(8, "big") + bytes(64))
        unknown = stranger.cosign(body, timestamp=400)
        note = add_signatures(sign_checkpoint(cp, log), [good1, good2, forged3, unknown])
        verifiers = [w1.verifier(), w2.verifier(), w3.verifier()]
        assert cosignatures_in(note, verifiers) == {"w1": 100, "w2": 200}
        assert cosignatures_in(note, []) == {}

    def test_latest_timestamp_wins(self) -> None:
        log, w = log_signer(), witness("w")
        cp = Checkpoint(origin=log.name, size=7, root_hash=ROOT)
        note = sign_checkpoint(cp, log) + w.cosign(cp.marshal(), timestamp=50).line()
        note += w.cosign(cp.marshal(), timestamp=70).line()
        note += w.cosign(cp.marshal(), timestamp=60).line()
        assert cosignatures_in(note, [w.verifier()]) == {"w": 70}

    def test_add_signatures_replaces_an_older_cosignature(self) -> None:
        log, w = log_signer(), witness("w")
        cp = Checkpoint(origin=log.name, size=7, root_hash=ROOT)
        note = add_signatures(sign_checkpoint(cp, log), [w.cosign(cp.marshal(), timestamp=50)])
        note = add_signatures(note, [w.cosign(cp.marshal(), timestamp=40)])
        assert cosignatures_in(note, [w.verifier()]) == {"w": 40}
        assert len(parse_note(note).signatures) == 2

    def test_cosignature_of_another_checkpoint_does_not_count(self) -> None:
        log, w = log_signer(), witness("w")
        cp = Checkpoint(origin=log.name, size=7, root_hash=ROOT)
        older = Checkpoint(origin=log.name, size=6, root_hash=ROOT)
        note = add_signatures(sign_checkpoint(cp, log), [w.cosign(older.marshal(), timestamp=1)])
        assert cosignatures_in(note, [w.verifier()]) == {}

    def test_malformed_note_or_body_rejected(self) -> None:
        w = witness("w")
        with pytest.raises(VerificationError, match="no blank line"):
            cosignatures_in("o\n1\n", [w.verifier()])
        note = sign_note("not\na checkpoint\n", [log_signer()])
        with pytest.raises(VerificationError, match="malformed checkpoint"):
            cosignatures_in(note, [w.verifier()])


class TestVerifyCosignatures:
    """Signed-note semantics: a bad signature by a known witness key is an error."""

    def test_valid_cosignatures_are_returned_and_unknown_keys_ignored(self) -> None:
        log = log_signer()
        w1, w2, stranger = witness("w1"), witness("w2"), witness("x")
        cp = Checkpoint(origin=log.name, size=7, root_hash=ROOT)
        body = cp.marshal()
        note = add_signatures(
            sign_checkpoint(cp, log),
            [w1.cosign(body, timestamp=100), w2.cosign(body, timestamp=200),
             stranger.cosign(body, timestamp=400)],
        )  # fmt: skip
        assert verify_cosignatures(note, [w1.verifier(), w2.verifier()]) == {"w1": 100, "w2": 200}

    def test_a_known_witness_whose_cosignature_fails_is_an_error(self) -> None:
        log, w1, w3 = log_signer(), witness("w1"), witness("w3")
        cp = Checkpoint(origin=log.name, size=7, root_hash=ROOT)
        forged = NoteSignature(w3.name, w3.key_hash, (300).to_bytes(8, "big") + bytes(64))
        note = add_signatures(
            sign_checkpoint(cp, log), [w1.cosign(cp.marshal(), timestamp=1), forged]
        )
        assert cosignatures_in(note, [w1.verifier(), w3.verifier()]) == {"w1": 1}
        with pytest.raises(VerificationError, match="cosignature of witness w3 does not verify"):
            verify_cosignatures(note, [w1.verifier(), w3.verifier()])
