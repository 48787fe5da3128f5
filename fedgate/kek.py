"""The key-encryption key file: its format and how a new one is written.

One line, ``fedgate-kek/v1 <base64 of 32 random bytes>``, in a file of mode 0600 created
exclusively (an existing key is never replaced: the bodies sealed under it would be lost).
The gateway reads it (``gateway.audit.FileKeyWrapper``); ``fedgate up`` and ``python -m
gateway.server --init-kek`` write it. It MUST NOT be committed, copied into backups of the
database it protects, or logged.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

__all__ = ["KEK_FILE_HEADER", "write_kek_file"]

KEK_FILE_HEADER = "fedgate-kek/v1"


def write_kek_file(path: Path) -> bool:
    """Create a new random KEK file at ``path`` (mode 0600) unless one exists; returns whether
    it wrote one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="ascii") as out:
        key = base64.b64encode(secrets.token_bytes(32)).decode()
        out.write(f"{KEK_FILE_HEADER} {key}\n")
        out.flush()
        os.fsync(out.fileno())
    return True
