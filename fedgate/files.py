"""Durable file replacement, shared by the PKI, the witnesses, the audit state and the CLI."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

__all__ = ["write_atomically"]


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Replace ``path`` with ``data``: a temporary file (``mode``), fsync, rename, fsync of the
    directory. After it returns the new content survives a crash; before, the old one does.
    Missing directories are created with ``dir_mode``. Raises ``OSError``."""
    path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
