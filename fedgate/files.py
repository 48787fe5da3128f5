"""Durable file replacement, shared by the PKI, the witnesses, the audit state and the CLI; and
the one reader of private key files.

- A file written with ``write_atomically`` MUST have its final mode from the moment it exists
  (created with it, never widened then narrowed): a private key is never readable by others,
  not even briefly.
- ``read_private_file`` MUST refuse a file that group or others may read or write, as ssh does,
  with a message that names the file, its mode and the fix.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path

__all__ = ["read_private_file", "write_atomically"]


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, dir_mode: int = 0o700) -> None:
    """Replace ``path`` with ``data``: a temporary file (``mode``), fsync, rename, fsync of the
    directory. After it returns the new content survives a crash; before, the old one does.
    Missing directories are created with ``dir_mode``. Raises ``OSError``."""
    path.parent.mkdir(mode=dir_mode, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crash: never reuse it (nor its mode)
    # Created exclusively with its final mode: the umask can only narrow it, and the bytes are
    # never in a file anyone else could open.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
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


def read_private_file(path: Path) -> bytes:
    """The bytes of a private key file; ``PermissionError`` (an ``OSError``) if group or others
    may read or write it, like ssh's "UNPROTECTED PRIVATE KEY FILE"."""
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode  # the file opened, not a name that could be swapped
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(
                f"unprotected private key file {path}: mode {stat.S_IMODE(mode):04o} lets group "
                f"or others read it; it must be 0600 (chmod 600 {path}), refusing to load it"
            )
        return f.read()
