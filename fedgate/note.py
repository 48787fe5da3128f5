"""C2SP signed notes (c2sp.org/signed-note) with Ed25519 signatures.

A signed note is a text ending in a newline, a blank line, then one or more signature lines
``"\u2014 <key name> <base64(4-byte key id || signature)>\\n"``. The key id of an Ed25519 key is
``SHA-256(name || 0x0A || 0x01 || public key)[:4]``; verifier keys travel as *vkeys*
``<name>+<hex key id>+<base64(0x01 || public key)>``, the form golang.org/x/mod/sumdb/note
reads and writes, so fedgate's notes open with standard tooling and vice versa.

Parsing is strict and raises :class:`fedgate.errors.VerificationError`; malformed keys, names and
vkeys given to constructors raise ``ValueError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.errors import VerificationError
from fedgate.keys import public_key_from_raw, raw_public_key, sign_bytes, verify_bytes

__all__ = [
    "ALG_ED25519",
    "KEY_HASH_SIZE",
    "MAX_SIGNATURES",
    "SIGNATURE_PREFIX",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignerKey",
    "VerifierKey",
    "add_signatures",
    "b64decode_strict",
    "check_key_name",
    "format_vkey",
    "key_hash_for",
    "parse_note",
    "parse_vkey",
    "sign_note",
    "verify_note",
]

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE
KEY_HASH_SIZE = 4
MAX_SIGNATURES = 100  # the spec asks for at least 16; golang.org/x/mod stops at 100 too
_HEX8 = re.compile(r"[0-9a-fA-F]{8}")


def check_key_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a valid key name (non-empty, no spaces, no '+')."""
    if not _valid_name(name):
        raise ValueError(
            f"invalid key name {name!r}: it must be non-empty, without spaces, '+' "
            "or control characters"
        )


def _valid_name(name: str) -> bool:
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() or c < " " for c in name)
        and _is_utf8(name)
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def key_hash_for(name: str, alg: int, public_key: bytes) -> bytes:
    """``SHA-256(name || 0x0A || alg || public_key)[:4]``, the signed-note key id."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([alg]) + public_key).digest()[
        :KEY_HASH_SIZE
    ]


def b64decode_strict(text: str) -> bytes:
    """Standard base64 (RFC 4648 section 4), canonical encoding only; ``ValueError`` otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise ValueError(f"not standard base64: {exc}") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError("not canonical standard base64")
    return raw


def parse_vkey(vkey: str, alg: int) -> tuple[str, bytes, bytes]:
    """Split a vkey into (name, key hash, public key), checking type byte ``alg`` and the hash.

    Raises ``ValueError`` on any malformation, another type byte, or a key hash that does not
    match the name and key.
    """
    name, sep1, rest = vkey.partition("+")
    hash_hex, sep2, key64 = rest.partition("+")
    if not sep1 or not sep2:
        raise ValueError("malformed vkey: want <name>+<key hash>+<base64 key>")
    check_key_name(name)
    if not _HEX8.fullmatch(hash_hex):
        raise ValueError(f"malformed vkey: key hash {hash_hex!r} is not 8 hex digits")
    try:
        key = b64decode_strict(key64)
    except ValueError as exc:
        raise ValueError(f"malformed vkey key: {exc}") from exc
    if not key:
        raise ValueError("malformed vkey: empty key")
    if key[0] != alg:
        raise ValueError(f"vkey has signature type 0x{key[0]:02x}, expected 0x{alg:02x}")
    if len(key) != 1 + 32:
        raise ValueError(f"vkey Ed25519 key is {len(key) - 1} bytes, not 32")
    key_hash = bytes.fromhex(hash_hex)
    if key_hash != key_hash_for(name, alg, key[1:]):
        raise ValueError("vkey key hash does not match its name and key")
    return name, key_hash, key[1:]


def format_vkey(name: str, key_hash: bytes, alg: int, public_key: bytes) -> str:
    """``<name>+<hex key hash>+<base64(alg || public_key)>``."""
    encoded = base64.b64encode(bytes([alg]) + public_key).decode("ascii")
    return f"{name}+{key_hash.hex()}+{encoded}"


class SignerKey:
    """A named Ed25519 private key of signature type ``ALG``, with its key hash.

    The shared part of ``NoteSigner`` (0x01) and ``checkpoint.CosignatureSigner`` (0x04);
    subclasses set ``ALG`` and add signing and ``verifier``.
    """

    __slots__ = ("_private_key", "key_hash", "name")
    ALG: ClassVar[int]

    def __init__(self, *, name: str, private_key: Ed25519PrivateKey) -> None:
        check_key_name(name)
        self.name = name
        self._private_key = private_key
        self.key_hash = key_hash_for(name, self.ALG, raw_public_key(private_key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, key_hash={self.key_hash.hex()})"


class VerifierKey:
    """A named Ed25519 public key of signature type ``ALG``: key hash and vkey.

    The shared part of ``NoteVerifier`` (0x01) and ``checkpoint.CosignatureVerifier`` (0x04);
    subclasses set ``ALG`` and add ``verify``.
    """

    __slots__ = ("_public_key", "key_hash", "name", "public_key_bytes")
    ALG: ClassVar[int]

    def __init__(self, *, name: str, public_key: Ed25519PublicKey) -> None:
        check_key_name(name)
        self.name = name
        self._public_key = public_key
        self.public_key_bytes = raw_public_key(public_key)
        self.key_hash = key_hash_for(name, self.ALG, self.public_key_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> Self:
        """Parse ``<name>+<hex key hash>+<base64(ALG || pubkey)>``; ``ValueError`` if malformed
        (including a vkey of another signature type)."""
        name, _, raw = parse_vkey(vkey, cls.ALG)
        return cls(name=name, public_key=public_key_from_raw(raw))

    def vkey(self) -> str:
        return format_vkey(self.name, self.key_hash, self.ALG, self.public_key_bytes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.vkey()!r})"


class NoteSigner(SignerKey):
    """Signs note texts with an Ed25519 key under a key name (signature type 0x01)."""

    __slots__ = ()
    ALG = ALG_ED25519

    def sign(self, message: bytes) -> bytes:
        """The raw 64-byte Ed25519 signature over ``message`` (without the key hash)."""
        return sign_bytes(self._private_key, message)

    def verifier(self) -> NoteVerifier:
        """The verifier for this signer's key."""
        return NoteVerifier(name=self.name, public_key=self._private_key.public_key())


class NoteVerifier(VerifierKey):
    """Verifies Ed25519 note signatures (type 0x01) of one named key."""

    __slots__ = ()
    ALG = ALG_ED25519

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (raw, without the key hash) is valid over ``message``."""
        return verify_bytes(self._public_key, signature, message)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key hash, and the signature bytes after the hash."""

    name: str
    key_hash: bytes
    signature: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_hash) != KEY_HASH_SIZE:
            raise ValueError(f"key hash must be {KEY_HASH_SIZE} bytes, got {len(self.key_hash)}")
        if not self.signature:
            raise ValueError("signature must not be empty")

    def line(self) -> str:
        """The signature line, with its final newline."""
        encoded = base64.b64encode(self.key_hash + self.signature).decode("ascii")
        return f"{SIGNATURE_PREFIX}{self.name} {encoded}\n"


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed note: its text (with the final newline) and its signatures in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def marshal(self) -> str:
        """The note as text: the text, a blank line, the signature lines."""
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise VerificationError("malformed note: text does not end with a newline")
    _check_characters(text)


def _check_characters(note: str) -> None:
    if not _is_utf8(note):
        raise VerificationError("malformed note: not valid UTF-8")
    for c in note:
        if c < " " and c != "\n":
            raise VerificationError(
                f"malformed note: control character U+{ord(c):04X} (only newline is allowed)"
            )


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise VerificationError(
            "malformed note: a signature line does not start with an em dash and a space"
        )
    name, sep, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not sep or not _valid_name(name):
        raise VerificationError(f"malformed note: bad key name in signature line {name!r}")
    try:
        raw = b64decode_strict(encoded)
    except ValueError as exc:
        raise VerificationError(f"malformed note: signature of {name!r}: {exc}") from exc
    if len(raw) <= KEY_HASH_SIZE:
        raise VerificationError(f"malformed note: signature of {name!r} is too short")
    return NoteSignature(name=name, key_hash=raw[:KEY_HASH_SIZE], signature=raw[KEY_HASH_SIZE:])


def parse_note(note: str) -> Note:
    """Parse a signed note without verifying it; raises ``VerificationError`` if malformed.

    Checks: valid UTF-8, no control characters but newline, text ending in a newline separated
    from the signatures by the last blank line, at least one and at most ``MAX_SIGNATURES``
    well-formed signature lines, each ending in a newline.
    """
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise VerificationError("malformed note: no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise VerificationError("malformed note: no signature lines")
    if not block.endswith("\n"):
        raise VerificationError("malformed note: the last signature line has no final newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError(
            f"malformed note: {len(lines)} signatures, more than {MAX_SIGNATURES}"
        )
    return Note(text=text, signatures=tuple(_parse_signature_line(line) for line in lines))


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """Sign ``text`` (which must end in a newline) with each signer; returns the whole note.

    Raises ``VerificationError`` if ``text`` is not a valid note text, ``ValueError`` if no
    signer is given.
    """
    if not signers:
        raise ValueError("sign_note needs at least one signer")
    _check_text(text)
    message = text.encode("utf-8")
    signatures = tuple(
        NoteSignature(name=s.name, key_hash=s.key_hash, signature=s.sign(message)) for s in signers
    )
    return Note(text=text, signatures=signatures).marshal()


def add_signatures(note: str, lines: Sequence[NoteSignature]) -> str:
    """Append signature lines (e.g. witness cosignatures) to a signed note.

    Nothing is verified. A new line replaces an existing one of the same key (same name and key
    hash), as golang.org/x/mod's ``note.Sign`` does; a line already present is not repeated.
    Raises ``VerificationError`` if ``note`` is malformed or would exceed ``MAX_SIGNATURES``.
    """
    parsed = parse_note(note)
    replaced = {(s.name, s.key_hash) for s in lines}
    kept = [s for s in parsed.signatures if (s.name, s.key_hash) not in replaced]
    added: list[NoteSignature] = []
    for s in lines:
        if s not in added:
            added.append(s)
    signatures = tuple(kept + added)
    if len(signatures) > MAX_SIGNATURES:
        raise VerificationError(f"a note may carry at most {MAX_SIGNATURES} signatures")
    return Note(text=parsed.text, signatures=signatures).marshal()


def verify_note(note: str, verifiers: Sequence[NoteVerifier]) -> tuple[Note, list[str]]:
    """Parse ``note`` and verify its signatures from the given keys.

    Returns the note and the names of the keys whose signatures verified, in note order.
    Signatures from unknown keys (name and key hash not both matching a verifier) are ignored,
    as the spec requires. Raises ``VerificationError`` if the note is malformed, if any
    signature from a known key fails (fail closed: the spec's SHOULD), or if none verifies.
    """
    parsed = parse_note(note)
    known: dict[tuple[str, bytes], NoteVerifier] = {}
    ambiguous: set[tuple[str, bytes]] = set()
    for v in verifiers:
        key = (v.name, v.key_hash)
        other = known.setdefault(key, v)
        if other.public_key_bytes != v.public_key_bytes:
            ambiguous.add(key)
    message = parsed.text.encode("utf-8")
    verified: list[str] = []
    seen: set[NoteSignature] = set()
    for sig in parsed.signatures:
        key = (sig.name, sig.key_hash)
        verifier = known.get(key)
        if verifier is None or sig in seen:
            continue
        seen.add(sig)
        if key in ambiguous:
            raise VerificationError(f"ambiguous key {sig.name}+{sig.key_hash.hex()}")
        if not verifier.verify(message, sig.signature):
            raise VerificationError(f"invalid signature for key {sig.name}+{sig.key_hash.hex()}")
        if sig.name not in verified:
            verified.append(sig.name)
    if not verified:
        raise VerificationError("note has no signature from a known key")
    return parsed, verified
