"""The key-encryption key (KEK) that wraps the audit log's data keys.

Every case's data key, and the key of the blind indexes, is stored only wrapped by a KEK that
the gateway's operator holds. ``KeyWrapper`` is the seam: two methods, so an HSM or a cloud KMS
plugs in by implementing them (``wrap`` = the HSM's ``C_WrapKey`` / KMS ``Encrypt`` with the
context as additional authenticated data, ``unwrap`` = ``C_UnwrapKey`` / KMS ``Decrypt``); the
key material then never leaves the device. ``FileKeyWrapper`` is the default: a 32-byte
AES-256-GCM key in a file of mode 0600, written by ``fedgate.kek.write_kek_file`` (``fedgate
up`` and ``python -m gateway.server --init-kek``) and never committed anywhere.

Contract:

- ``unwrap`` MUST fail (``KeyUnavailable``) for a wrapped key made under another KEK or another
  context, never return other bytes.
- ``FileKeyWrapper.load`` MUST refuse a missing file, a malformed one, and one that the group
  or others may read (fail closed, naming the file and the fix).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import stat
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fedgate.errors import KeyUnavailable
from fedgate.kek import KEK_FILE_HEADER, write_kek_file

__all__ = ["KEK_FILE_HEADER", "FileKeyWrapper", "KeyWrapper", "write_kek_file"]

_KEY_SIZE = 32
_NONCE_SIZE = 12


class KeyWrapper(Protocol):
    """Wraps and unwraps data keys under a key-encryption key the operator holds.

    ``key_id`` names the KEK (recorded beside each wrapped key, so a wrong KEK is reported as
    such). ``context`` is bound to the wrapped key as associated data."""

    @property
    def key_id(self) -> str: ...

    def wrap(self, key: bytes, *, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes: ...


class FileKeyWrapper:
    """A ``KeyWrapper`` over an AES-256-GCM key read from a 0600 file."""

    def __init__(self, kek: bytes, *, source: str) -> None:
        if len(kek) != _KEY_SIZE:
            raise KeyUnavailable(f"the key-encryption key in {source} is not {_KEY_SIZE} bytes")
        self._aead = AESGCM(kek)
        self._key_id = hashlib.sha256(b"fedgate-kek-id\n" + kek).hexdigest()[:16]
        self._source = source

    @classmethod
    def load(cls, path: Path) -> FileKeyWrapper:
        """Read the KEK file at ``path``; raises ``KeyUnavailable`` saying what is wrong."""
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise KeyUnavailable(
                f"no key-encryption key at {path}: create one with `python -m gateway.server "
                "--init-kek` (or `fedgate up`), or point [audit] kek_path at yours"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyUnavailable(f"cannot read the key-encryption key {path}: {exc}") from exc
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyUnavailable(
                f"the key-encryption key {path} is readable by others (mode "
                f"{stat.S_IMODE(mode):04o}): chmod 600 it"
            )
        header, _, body = text.strip().partition(" ")
        try:
            if header != KEK_FILE_HEADER:
                raise ValueError("wrong header")
            kek = base64.b64decode(body, validate=True)
        except ValueError:
            raise KeyUnavailable(
                f"{path} is not a fedgate key-encryption key ({KEK_FILE_HEADER} <base64>)"
            ) from None
        return cls(kek, source=str(path))

    @property
    def key_id(self) -> str:
        return self._key_id

    def wrap(self, key: bytes, *, context: bytes) -> bytes:
        nonce = secrets.token_bytes(_NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, key, context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE_SIZE], wrapped[_NONCE_SIZE:], context)
        except (InvalidTag, ValueError):
            raise KeyUnavailable(
                f"the key-encryption key {self._source} does not unwrap a stored key: it is "
                "not the key the log was sealed with"
            ) from None
