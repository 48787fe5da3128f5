"""Tests for fedgate.note: golang.org/x/mod/sumdb/note vectors, round trips, malformed notes."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.errors import VerificationError
from fedgate.keys import raw_public_key
from fedgate.note import (
    MAX_SIGNATURES,
    Note,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    add_signatures,
    parse_note,
    sign_note,
    verify_note,
)

# Vectors from golang.org/x/mod/sumdb/note/note_test.go.
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    "otpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWL"
    "ox33WWd1RvMc+QQ=\n"
)
# The example note of c2sp.org/signed-note (its key is not published: parse only).
SPEC_NOTE = (
    "Ognuno sta solo sul cuor della terra\n"
    "trafitto da un raggio di sole:\n"
    "\n"
    "ed \u00e8 subito sera.\n"
    "\n"
    "\u2014 quasimodo.example/salvatore NnugSzTjtVAewIS+Z/iJhUPeFDkO/5QQ2i5ddnGITLlC+EhfLW9oJKONr"
    "MouFSQU0xMcXxj99ihAQwaqP3ZekRwNtIc=\n"
)


def signer_from_skey(skey: str) -> NoteSigner:
    """A NoteSigner from a Go ``PRIVATE+KEY+name+hash+base64(0x01 || seed)`` key."""
    _, _, name, _, key64 = skey.split("+", 4)
    raw = base64.b64decode(key64)
    assert raw[0] == 1
    return NoteSigner(name=name, private_key=Ed25519PrivateKey.from_private_bytes(raw[1:]))


def new_signer(name: str) -> NoteSigner:
    return NoteSigner(name=name, private_key=Ed25519PrivateKey.generate())


class TestNoteSigner:
    def test_go_vector_key_hash_and_signature(self) -> None:
        signer = signer_from_skey(PETER_SKEY)
        assert signer.name == "PeterNeumann"
        assert signer.key_hash == bytes.fromhex("c74f20a3")
        assert sign_note(TEXT, [signer]) == TEXT + "\n" + PETER_SIG
        assert signer.verifier().vkey() == PETER_VKEY

    def test_key_hash_is_spec_formula(self) -> None:
        key = Ed25519PrivateKey.generate()
        signer = NoteSigner(name="example.com/log", private_key=key)
        expected = hashlib.sha256(b"example.com/log\n\x01" + raw_public_key(key)).digest()[:4]
        assert signer.key_hash == expected

    def test_sign_returns_raw_ed25519_signature(self) -> None:
        signer = new_signer("a")
        sig = signer.sign(b"hi")
        assert len(sig) == 64
        assert signer.verifier().verify(b"hi", sig)
        assert not signer.verifier().verify(b"ho", sig)
        assert not signer.verifier().verify(b"hi", sig[:-1])

    @pytest.mark.parametrize("name", ["", "a+b", "a b", "a\tb", "a\u00a0b", "a\u3000b", "a\nb"])
    def test_rejects_invalid_names(self, name: str) -> None:
        with pytest.raises(ValueError, match="invalid key name"):
            new_signer(name)

    def test_accepts_unicode_names(self) -> None:
        signer = new_signer("Se\u00f1or-1")
        note = sign_note("hi\n", [signer])
        assert verify_note(note, [signer.verifier()])[1] == ["Se\u00f1or-1"]


class TestNoteVerifierVkey:
    def test_go_vectors_round_trip(self) -> None:
        for vkey in (PETER_VKEY, ENOCH_VKEY):
            verifier = NoteVerifier.from_vkey(vkey)
            assert verifier.vkey() == vkey
        assert NoteVerifier.from_vkey(PETER_VKEY).key_hash == bytes.fromhex("c74f20a3")

    def test_uppercase_key_hash_accepted(self) -> None:
        upper = PETER_VKEY.replace("c74f20a3", "C74F20A3")
        assert NoteVerifier.from_vkey(upper).vkey() == PETER_VKEY

    def test_every_substring_and_byte_increment_rejected(self) -> None:
        # As golang.org/x/mod's TestNewVerifier: any mangling must fail.
        for i in range(len(PETER_VKEY) + 1):
            for j in range(i + 1, len(PETER_VKEY) + 1):
                if (i, j) != (0, len(PETER_VKEY)):
                    with pytest.raises(ValueError, match=r"."):
                        NoteVerifier.from_vkey(PETER_VKEY[i:j])
        for i, c in enumerate(PETER_VKEY):
            mangled = PETER_VKEY[:i] + chr(ord(c) + 1) + PETER_VKEY[i + 1 :]
            with pytest.raises(ValueError, match=r"."):
                NoteVerifier.from_vkey(mangled)

    @pytest.mark.parametrize(
        ("vkey", "message"),
        [
            (
                # Go rejects it for its length; its base64 is not canonical either.
                "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
                "not canonical",
            ),
            (
                "PeterNeumann+cc469956+" + base64.b64encode(b"\x01" + bytes(31)).decode(),
                "31 bytes, not 32",
            ),
            (
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "signature type 0x65",
            ),
            ("PeterNeumann+c74f20a3", "malformed vkey"),
            ("PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 hex"),
            ("PeterNeumann+c74f20a3+", "empty key"),
            ("PeterNeumann+c74f20a3+!!!", "base64"),
            (
                "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
                "does not match",
            ),
            # A cosignature (type 0x04) key is not a note key.
            ("remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2", "0x04"),
        ],
    )
    def test_rejects_bad_vkeys(self, vkey: str, message: str) -> None:
        with pytest.raises(ValueError, match=message):
            NoteVerifier.from_vkey(vkey)


class TestParseNote:
    def test_spec_example_keeps_blank_lines_in_text(self) -> None:
        note = parse_note(SPEC_NOTE)
        assert note.text.endswith("\n\ned \u00e8 subito sera.\n")
        assert note.text.count("\n") == 4
        (sig,) = note.signatures
        assert sig.name == "quasimodo.example/salvatore"
        assert len(sig.key_hash) == 4
        assert len(sig.signature) == 64
        assert note.marshal() == SPEC_NOTE

    def test_text_may_end_with_blank_line(self) -> None:
        signer = new_signer("n")
        note = sign_note("Note\n\n", [signer])
        assert parse_note(note).text == "Note\n\n"
        verify_note(note, [signer.verifier()])

    @pytest.mark.parametrize(
        ("note", "message"),
        [
            (TEXT, "no blank line"),
            (TEXT + "\n", "no signature lines"),
            (TEXT + "\n" + PETER_SIG[:-1], "no final newline"),
            ("\x01" + TEXT + "\n" + PETER_SIG, "control character U\\+0001"),
            (TEXT + "\r\n" + PETER_SIG, "control character U\\+000D"),
            ("a\tb\n\n" + PETER_SIG, "control character U\\+0009"),
            ("\ud800" + TEXT + "\n" + PETER_SIG, "not valid UTF-8"),
            (TEXT + "\n" + PETER_SIG + "Unexpected line.\n", "em dash"),
            (TEXT + "\n" + PETER_SIG.replace("\u2014", "-"), "em dash"),
            (TEXT + "\n" + PETER_SIG.replace("\u2014 ", "\u2014"), "em dash"),
            (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Bad Name"), "base64"),
            (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter+Neumann"), "bad key name"),
            (TEXT + "\n" + PETER_SIG.replace("PeterNeumann ", ""), "bad key name"),
            (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", ""), "bad key name"),
            (TEXT + "\n" + PETER_SIG.replace("PeterNeumann", "Peter\u00a0N"), "bad key name"),
            (TEXT + "\n\u2014 PeterNeumann \n", "too short"),
            (TEXT + "\n\u2014 PeterNeumann AAAAAA==\n", "too short"),
            (TEXT + "\n\u2014 PeterNeumann AAAAAAB=\n", "canonical"),
            (TEXT + "\n\u2014 PeterNeumann AAAA AAAA\n", "base64"),
            (TEXT + "\n" + PETER_SIG.replace("AM=", "AM"), "base64"),
            (TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1), "more than 100"),
        ],
    )
    def test_malformed_notes_rejected(self, note: str, message: str) -> None:
        with pytest.raises(VerificationError, match=message):
            parse_note(note)
        with pytest.raises(VerificationError, match=message):
            verify_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])

    def test_up_to_max_signatures_accepted(self) -> None:
        note = TEXT + "\n" + PETER_SIG * MAX_SIGNATURES
        assert len(parse_note(note).signatures) == MAX_SIGNATURES
        _, names = verify_note(note, [NoteVerifier.from_vkey(PETER_VKEY)])
        assert names == ["PeterNeumann"]


class TestVerifyNote:
    def test_go_vectors_known_and_unknown(self) -> None:
        peter = NoteVerifier.from_vkey(PETER_VKEY)
        enoch = NoteVerifier.from_vkey(ENOCH_VKEY)
        note = TEXT + "\n" + PETER_SIG + ENOCH_SIG
        parsed, names = verify_note(note, [peter])
        assert parsed.text == TEXT
        assert names == ["PeterNeumann"]
        assert [s.name for s in parsed.signatures] == ["PeterNeumann", "EnochRoot"]
        assert verify_note(note, [enoch, peter])[1] == ["PeterNeumann", "EnochRoot"]
        with pytest.raises(VerificationError, match="no signature from a known key"):
            verify_note(note, [])

    def test_go_vector_invalid_signature(self) -> None:
        bad = TEXT + "\n" + PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
        with pytest.raises(VerificationError, match="invalid signature for key PeterNeumann"):
            verify_note(bad, [NoteVerifier.from_vkey(PETER_VKEY)])

    def test_round_trip_two_signers(self) -> None:
        a, b = new_signer("a.example/log"), new_signer("b.example/witness")
        note = sign_note("hello\nworld\n", [a, b])
        parsed, names = verify_note(note, [b.verifier(), a.verifier()])
        assert names == ["a.example/log", "b.example/witness"]
        assert parsed == Note(text="hello\nworld\n", signatures=parsed.signatures)
        assert len(parsed.signatures) == 2

    def test_corrupted_text_rejected(self) -> None:
        signer = new_signer("log")
        note = sign_note("size 10\nroot abc\n", [signer])
        for i, c in enumerate("size 10\nroot abc"):
            if c == "\n":
                continue
            tampered = note[:i] + ("X" if c != "X" else "Y") + note[i + 1 :]
            with pytest.raises(VerificationError, match="invalid signature"):
                verify_note(tampered, [signer.verifier()])

    def test_corrupted_signature_rejected(self) -> None:
        signer = new_signer("log")
        text = "body\n"
        note = parse_note(sign_note(text, [signer]))
        (sig,) = note.signatures
        for i in range(len(sig.signature)):
            for bit in (0, 5):
                raw = bytearray(sig.signature)
                raw[i] ^= 1 << bit
                bad = Note(text, (NoteSignature(sig.name, sig.key_hash, bytes(raw)),)).marshal()
                with pytest.raises(VerificationError, match="invalid signature"):
                    verify_note(bad, [signer.verifier()])
        for wrong_length in (sig.signature + b"\x00", sig.signature[:-1]):
            bad = Note(text, (NoteSignature(sig.name, sig.key_hash, wrong_length),)).marshal()
            with pytest.raises(VerificationError, match="invalid signature"):
                verify_note(bad, [signer.verifier()])

    def test_changed_key_hash_or_name_makes_signature_unknown(self) -> None:
        signer = new_signer("log")
        sig = parse_note(sign_note("body\n", [signer])).signatures[0]
        other_hash = NoteSignature(sig.name, b"\x00\x00\x00\x00", sig.signature)
        other_name = NoteSignature("log2", sig.key_hash, sig.signature)
        for s in (other_hash, other_name):
            with pytest.raises(VerificationError, match="no signature from a known key"):
                verify_note(Note("body\n", (s,)).marshal(), [signer.verifier()])

    def test_unknown_signers_ignored(self) -> None:
        log, stranger = new_signer("log"), new_signer("stranger")
        # Same name, different key: unknown, ignored even though it does not verify.
        impostor = new_signer("log")
        note = sign_note("body\n", [stranger, impostor, log])
        _, names = verify_note(note, [log.verifier()])
        assert names == ["log"]

    def test_bad_signature_from_known_key_fails_whole_note(self) -> None:
        log, witness = new_signer("log"), new_signer("witness")
        good = parse_note(sign_note("body\n", [log])).signatures[0]
        forged = NoteSignature(witness.name, witness.key_hash, bytes(64))
        note = Note("body\n", (good, forged)).marshal()
        with pytest.raises(VerificationError, match="invalid signature for key witness"):
            verify_note(note, [log.verifier(), witness.verifier()])
        assert verify_note(note, [log.verifier()])[1] == ["log"]

    def test_second_different_signature_from_same_key_is_checked(self) -> None:
        log = new_signer("log")
        good = parse_note(sign_note("body\n", [log])).signatures[0]
        bad = NoteSignature(log.name, log.key_hash, bytes(64))
        note = Note("body\n", (good, good, bad)).marshal()
        with pytest.raises(VerificationError, match="invalid signature"):
            verify_note(note, [log.verifier()])
        assert verify_note(Note("body\n", (good, good)).marshal(), [log.verifier()])[1] == ["log"]

    def test_ambiguous_verifiers(self) -> None:
        log = new_signer("log")
        note = sign_note("body\n", [log])
        same = [log.verifier(), log.verifier()]
        assert verify_note(note, same)[1] == ["log"]
        clash = NoteVerifier(name="log", public_key=Ed25519PrivateKey.generate().public_key())
        clash.key_hash = log.key_hash  # simulate a key-id collision between configured keys
        with pytest.raises(VerificationError, match="ambiguous key log"):
            verify_note(note, [log.verifier(), clash])


class TestSignNote:
    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("abc", "does not end with a newline"),
            ("", "does not end with a newline"),
            ("a\x00b\n", "control character"),
            ("a\rb\n", "control character"),
        ],
    )
    def test_rejects_bad_text(self, text: str, message: str) -> None:
        with pytest.raises(VerificationError, match=message):
            sign_note(text, [new_signer("x")])

    def test_needs_a_signer(self) -> None:
        with pytest.raises(ValueError, match="at least one signer"):
            sign_note("a\n", [])


class TestNoteSignature:
    @pytest.mark.parametrize(
        ("name", "key_hash", "signature", "message"),
        [
            ("a b", b"1234", b"s", "invalid key name"),
            ("a", b"123", b"s", "4 bytes"),
            ("a", b"12345", b"s", "4 bytes"),
            ("a", b"1234", b"", "must not be empty"),
        ],
    )
    def test_rejects_invalid(
        self, name: str, key_hash: bytes, signature: bytes, message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            NoteSignature(name=name, key_hash=key_hash, signature=signature)

    def test_line_format(self) -> None:
        sig = NoteSignature(name="w", key_hash=b"\x01\x02\x03\x04", signature=b"\xff")
        assert sig.line() == "\u2014 w AQIDBP8=\n"


class TestAddSignatures:
    def test_appends_and_verifies(self) -> None:
        log, witness = new_signer("log"), new_signer("witness")
        note = sign_note("body\n", [log])
        extra = parse_note(sign_note("body\n", [witness])).signatures
        combined = add_signatures(note, extra)
        assert combined == note + extra[0].line()
        assert verify_note(combined, [log.verifier(), witness.verifier()])[1] == ["log", "witness"]

    def test_duplicates_not_repeated_and_same_key_replaced(self) -> None:
        log = new_signer("log")
        note = sign_note("body\n", [log])
        (sig,) = parse_note(note).signatures
        assert add_signatures(note, [sig, sig]) == note
        replacement = NoteSignature(log.name, log.key_hash, b"\x00" * 64)
        replaced = parse_note(add_signatures(note, [replacement]))
        assert replaced.signatures == (replacement,)

    def test_rejects_malformed_note_and_too_many(self) -> None:
        with pytest.raises(VerificationError, match="no blank line"):
            add_signatures("body\n", [])
        note = sign_note("body\n", [new_signer("log")])
        many = [NoteSignature(f"w{i}", b"\x00\x00\x00\x01", b"\x01") for i in range(MAX_SIGNATURES)]
        with pytest.raises(VerificationError, match="at most 100 signatures"):
            add_signatures(note, many)
