"""Console accounts: staff and auditors of each member, with scrypt password hashes and lock-out.

One SQLite file (``users.sqlite`` in a process's state directory) holds the accounts that may log
in to that process's console: user id, member, display name, role (``staff`` or ``auditor``), the
password hash, and the failed-attempt counter.

Contract:

- A password MUST only be stored as an scrypt hash (``cryptography``; n=2**15, r=8, p=1, a fresh
  16-byte salt); the parameters are stored with the hash, so they can be raised later without
  invalidating existing accounts. Checks compare in constant time.
- After ``MAX_FAILURES`` wrong passwords in a row an account MUST be locked for ``LOCKOUT``;
  while locked even the right password is refused (``PermissionRefused`` ``LOCKED_OUT``).
  Concurrent attempts MUST NOT get past the limit: at most ``MAX_FAILURES`` passwords are
  checked per lock-out, however many arrive at once (the count and the lock are one transaction).
- The store's files (the database and its ``-wal`` and ``-shm``, which hold password hashes)
  MUST be readable by the owner only (0600) from the moment they exist.
- An unknown user and a wrong password MUST look the same to the caller (same error, a hash is
  computed either way), so the login form does not reveal which accounts exist.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from fedgate.errors import (
    AuthenticationError,
    FedgateError,
    FieldViolation,
    InvalidArgument,
    PermissionRefused,
)
from fedgate.federation import check_member_id
from fedgate.storage import Schema, immediate, open_store
from fedgate.types import MemberId

__all__ = [
    "DEFAULT_SCRYPT",
    "LOCKOUT",
    "MAX_FAILURES",
    "MIN_PASSWORD",
    "USERS_FILE",
    "Role",
    "ScryptParams",
    "User",
    "UserStore",
    "check_user_id",
    "hash_password",
    "verify_password",
]

USERS_FILE = "users.sqlite"
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD = 10
_MAX_PASSWORD = 1024
_SALT_BYTES = 16
_KEY_BYTES = 32
_UNAVAILABLE = "USERS_UNAVAILABLE"
_USER_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class Role(StrEnum):
    """What an account may do: answer its agency's queue, or review the audit log."""

    STAFF = "staff"
    AUDITOR = "auditor"


@dataclass(frozen=True, slots=True)
class ScryptParams:
    """scrypt cost parameters: CPU/memory cost ``n`` (a power of two), block size ``r``,
    parallelism ``p``. The default needs 32 MiB and about 0.1 s per check."""

    n: int = 2**15
    r: int = 8
    p: int = 1


DEFAULT_SCRYPT = ScryptParams()


@dataclass(frozen=True, slots=True)
class User:
    """A console account (never its password hash)."""

    user_id: str
    member_id: MemberId
    display_name: str
    role: Role


def check_user_id(user_id: str) -> str:
    """``user_id`` if it is 3 to 32 of ``[A-Za-z0-9._-]`` (the staff-id rule of the node config);
    raises ``InvalidArgument`` naming the field."""
    if not 3 <= len(user_id) <= 32 or not set(user_id) <= _USER_ID_CHARS:
        raise InvalidArgument.for_fields(
            [FieldViolation("user", "use 3 to 32 characters of letters, digits, '.', '_', '-'")]
        )
    return user_id


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """``scrypt$n$r$p$salt$key`` (base64) for ``password`` with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES)
    key = Scrypt(salt=salt, length=_KEY_BYTES, n=params.n, r=params.r, p=params.p).derive(
        password.encode("utf-8")
    )
    return f"scrypt${params.n}${params.r}${params.p}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded`` (from ``hash_password``); constant-time compare.
    A malformed hash never matches."""
    try:
        scheme, n, r, p, salt_b64, key_b64 = encoded.split("$")
        if scheme != "scrypt":
            return False
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(key_b64, validate=True)
        kdf = Scrypt(salt=salt, length=len(expected), n=int(n), r=int(r), p=int(p))
        derived = kdf.derive(password.encode("utf-8"))
    except (ValueError, binascii.Error):
        return False
    return hmac.compare_digest(derived, expected)


# A hash to check against when the user does not exist, so that both paths cost the same.
_DUMMY_HASH = f"scrypt$32768$8$1${_b64(bytes(_SALT_BYTES))}${_b64(bytes(_KEY_BYTES))}"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    member_id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('staff', 'auditor')),
    password_hash TEXT NOT NULL,
    failed INTEGER NOT NULL DEFAULT 0,
    locked_until_us INTEGER NOT NULL DEFAULT 0,
    created_us INTEGER NOT NULL
);
"""
_STORE = Schema(store="console user store", version=1, create=_SCHEMA, legacy_table="users")


def _owner_only(path: Path) -> None:
    """Create ``path`` 0600 before SQLite opens it (SQLite gives its ``-wal`` and ``-shm``
    files, which hold password hashes too, the database file's mode), and narrow the files of a
    store made before that to 0600."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if file.exists():
                os.chmod(file, 0o600)
    except OSError as exc:
        raise FedgateError(
            f"cannot open the user store {path}: {exc}", reason=_UNAVAILABLE
        ) from exc


def _us(at: datetime) -> int:
    return int(at.timestamp() * 1_000_000)


class UserStore:
    """The accounts of one process's console. Methods block (scrypt takes ~0.1 s): call them
    from async code through ``asyncio.to_thread``. Database errors raise ``FedgateError``
    (reason ``USERS_UNAVAILABLE``): the console cannot tell who logs in, so it refuses."""

    def __init__(self, path: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self._path = Path(path)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        _owner_only(self._path)
        self._conn = open_store(
            self._path, _STORE, error=lambda message: FedgateError(message, reason=_UNAVAILABLE)
        )

    @classmethod
    def in_state_dir(
        cls, state_dir: Path, *, clock: Callable[[], datetime] | None = None
    ) -> UserStore:
        return cls(Path(state_dir) / USERS_FILE, clock=clock)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                with immediate(self._conn):
                    yield self._conn
            except sqlite3.Error as exc:
                raise FedgateError(
                    f"the user store {self._path} failed: {exc}", reason=_UNAVAILABLE
                ) from exc

    def add_user(
        self,
        user_id: str,
        *,
        member_id: str,
        display_name: str,
        role: Role,
        password: str,
        params: ScryptParams = DEFAULT_SCRYPT,
    ) -> User:
        """Create an account. Raises ``InvalidArgument`` for a bad id, member, name or password
        (at least ``MIN_PASSWORD`` characters), or when the user id is taken."""
        check_user_id(user_id)
        member = check_member_id(member_id)
        name = display_name.strip()
        violations: list[FieldViolation] = []
        if not 1 <= len(name) <= 64:
            violations.append(FieldViolation("name", "give a display name of 1 to 64 characters"))
        if not MIN_PASSWORD <= len(password) <= _MAX_PASSWORD:
            violations.append(
                FieldViolation("password", f"use {MIN_PASSWORD} to {_MAX_PASSWORD} characters")
            )
        if violations:
            raise InvalidArgument.for_fields(violations)
        encoded = hash_password(password, params)
        with self._tx() as conn:
            try:
                conn.execute(
                    "INSERT INTO users(user_id, member_id, display_name, role, password_hash,"
                    " created_us) VALUES (?, ?, ?, ?, ?, ?)",
                    (user_id, member, name, Role(role).value, encoded, _us(self._clock())),
                )
            except sqlite3.IntegrityError as exc:
                raise InvalidArgument.for_fields(
                    [FieldViolation("user", f"the user id {user_id} is already taken")]
                ) from exc
        return User(user_id, member, name, Role(role))

    def get(self, user_id: str) -> User | None:
        with self._tx() as conn:
            row = conn.execute(
                "SELECT user_id, member_id, display_name, role FROM users WHERE user_id = ?",
                (user_id,),
            ).fetchone()
        return None if row is None else User(row[0], MemberId(row[1]), row[2], Role(row[3]))

    def users(self) -> tuple[User, ...]:
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT user_id, member_id, display_name, role FROM users ORDER BY user_id"
            ).fetchall()
        return tuple(User(r[0], MemberId(r[1]), r[2], Role(r[3])) for r in rows)

    def verify_login(self, user_id: str, password: str) -> User:
        """The account if ``password`` is right. Raises ``AuthenticationError`` for a wrong
        password or unknown user, ``PermissionRefused`` (reason ``LOCKED_OUT``) while locked.

        Each attempt is counted as a failure *before* its password is checked, in the same
        transaction that checks the lock, and the attempt that reaches ``MAX_FAILURES`` locks
        the account before checking: however many attempts arrive at once, at most
        ``MAX_FAILURES`` passwords are checked per lock-out. A right password then clears the
        counter and the lock."""
        now_us = _us(self._clock())
        with self._tx() as conn:
            row = conn.execute(
                "SELECT member_id, display_name, role, password_hash, failed, locked_until_us"
                " FROM users WHERE user_id = ?",
                (user_id,),
            ).fetchone()
            if row is not None and row[5] <= now_us:
                attempt = row[4] + 1
                if attempt >= MAX_FAILURES:
                    conn.execute(
                        "UPDATE users SET failed = 0, locked_until_us = ? WHERE user_id = ?",
                        (now_us + int(LOCKOUT.total_seconds() * 1_000_000), user_id),
                    )
                else:
                    conn.execute(
                        "UPDATE users SET failed = ? WHERE user_id = ?", (attempt, user_id)
                    )
        if row is None:
            verify_password(password, _DUMMY_HASH)
            raise AuthenticationError("wrong user or password", reason="BAD_CREDENTIALS")
        member, name, role, encoded, _, locked_until = row
        if locked_until > now_us:
            raise PermissionRefused(
                f"the account {user_id} is locked after {MAX_FAILURES} failed logins; try again"
                " later or ask an administrator",
                reason="LOCKED_OUT",
            )
        if verify_password(password, encoded):
            with self._tx() as conn:
                conn.execute(
                    "UPDATE users SET failed = 0, locked_until_us = 0 WHERE user_id = ?",
                    (user_id,),
                )
            return User(user_id, MemberId(member), name, Role(role))
        if attempt >= MAX_FAILURES:
            raise PermissionRefused(
                f"the account {user_id} is now locked for {int(LOCKOUT.total_seconds() // 60)}"
                f" minutes after {MAX_FAILURES} failed logins",
                reason="LOCKED_OUT",
            )
        raise AuthenticationError("wrong user or password", reason="BAD_CREDENTIALS")
        member, name, role, encoded, _, locked_until = row
        if locked_until > now_us:
            raise PermissionRefused(
                f"the account {user_id} is locked after {MAX_FAILURES} failed logins; try again"
                " later or ask an administrator",
                reason="LOCKED_OUT",
            )
        ok = verify_password(password, encoded)
        with self._tx() as conn:
            if ok:
                conn.execute(
                    "UPDATE users SET failed = 0, locked_until_us = 0 WHERE user_id = ?",
                    (user_id,),
                )
                return User(user_id, MemberId(member), name, Role(role))
            # Re-read the counter inside the write transaction: concurrent failures all count.
            (failed,) = conn.execute(
                "SELECT failed FROM users WHERE user_id = ?", (user_id,)
            ).fetchone()
            failed += 1
            if failed >= MAX_FAILURES:
                conn.execute(
                    "UPDATE users SET failed = 0, locked_until_us = ? WHERE user_id = ?",
                    (now_us + int(LOCKOUT.total_seconds() * 1_000_000), user_id),
                )
            else:
                conn.execute("UPDATE users SET failed = ? WHERE user_id = ?", (failed, user_id))
        if failed >= MAX_FAILURES:
            raise PermissionRefused(
                f"the account {user_id} is now locked for {int(LOCKOUT.total_seconds() // 60)}"
                f" minutes after {MAX_FAILURES} failed logins",
                reason="LOCKED_OUT",
            )
        raise AuthenticationError("wrong user or password", reason="BAD_CREDENTIALS")
