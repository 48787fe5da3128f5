"""Ed25519 keys: loading, saving (0600), key ids, and the one place that signs and verifies.

Keys are held as ``cryptography`` objects (PEM files, certificates and the registry use them),
but every signature is made and checked here, through libsodium (PyNaCl): on the development
VM it verifies in about 60 % of the time ``cryptography`` takes and releases the GIL while it
works (``python -m bench profile`` shows the figures). A key is parsed for libsodium once and
cached with its key id, so the hot path never re-reads raw bytes or re-hashes a key.
Ed25519 is deterministic, so signatures are byte-for-byte those ``cryptography`` would make;
libsodium's verification is the stricter of the two (it refuses small-order keys and
non-canonical signatures), which only ever turns a doubtful signature into a refusal.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Final

import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.files import read_private_file, write_atomically
from fedgate.types import KeyId

__all__ = [
    "SIGNATURE_SIZE",
    "generate_signing_key",
    "key_id_of",
    "load_private_key",
    "public_key_from_raw",
    "raw_public_key",
    "save_private_key",
    "sign_bytes",
    "verify_bytes",
]

SIGNATURE_SIZE: Final = 64
"""Bytes in an Ed25519 signature."""

_CACHE_LIMIT: Final = 4096
"""Parsed keys kept; a federation has tens of keys, so the bound only stops a leak."""

# id(key) -> (key, parsed key, key id). The key itself is kept so its id cannot be reused by
# another object while the entry lives; the ``is`` check below makes a stale id harmless.
_verifiers: dict[int, tuple[Ed25519PublicKey, nacl.signing.VerifyKey, KeyId]] = {}
_signers: dict[int, tuple[Ed25519PrivateKey, nacl.signing.SigningKey]] = {}
_lock = threading.Lock()


def _parsed_public(key: Ed25519PublicKey) -> tuple[nacl.signing.VerifyKey, KeyId]:
    entry = _verifiers.get(id(key))
    if entry is not None and entry[0] is key:
        return entry[1], entry[2]
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    parsed = (key, nacl.signing.VerifyKey(raw), KeyId(hashlib.sha256(raw).digest()[:16].hex()))
    with _lock:
        if len(_verifiers) >= _CACHE_LIMIT:
            _verifiers.clear()
        _verifiers[id(key)] = parsed
    return parsed[1], parsed[2]


def _parsed_private(key: Ed25519PrivateKey) -> nacl.signing.SigningKey:
    entry = _signers.get(id(key))
    if entry is not None and entry[0] is key:
        return entry[1]
    signing = nacl.signing.SigningKey(key.private_bytes_raw())
    with _lock:
        if len(_signers) >= _CACHE_LIMIT:
            _signers.clear()
        _signers[id(key)] = (key, signing)
    return signing


def sign_bytes(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """The 64-byte Ed25519 signature of ``message``."""
    return _parsed_private(key).sign(message).signature


def verify_bytes(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid Ed25519 signature of ``message`` under ``key``.

    Never raises for a bad signature (wrong length included): callers turn ``False`` into the
    refusal of their own domain.
    """
    if len(signature) != SIGNATURE_SIZE:
        return False
    try:
        _parsed_public(key)[0].verify(message, signature)
    except nacl.exceptions.BadSignatureError:
        return False
    return True


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def raw_public_key(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of the public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(raw: bytes) -> Ed25519PublicKey:
    """Raises ``ValueError`` if ``raw`` is not 32 bytes."""
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id_of(key: Ed25519PublicKey | Ed25519PrivateKey | bytes) -> KeyId:
    """The key id: hex of the first 16 bytes of SHA-256 over the raw public key."""
    if isinstance(key, Ed25519PublicKey):
        return _parsed_public(key)[1]
    raw = key if isinstance(key, bytes) else raw_public_key(key)
    return KeyId(hashlib.sha256(raw).digest()[:16].hex())


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write the key as unencrypted PKCS#8 PEM, readable by the owner only (0600)."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomically(path, pem, mode=0o600)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key in ``path``; ``PermissionError`` if others may read the file,
    ``ValueError`` if it holds no Ed25519 private key."""
    key = serialization.load_pem_private_key(read_private_file(path), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key
