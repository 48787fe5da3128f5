"""Console sessions in signed cookies: who is logged in, their CSRF token, and expiry.

The cookie is ``base64url(json) "." base64url(HMAC-SHA256(key, json))``. The key is 32 random
bytes kept in a file readable only by the process's user (``console-secret.key``, mode 0600) in
its state directory, so sessions survive a restart but never another process's key.

Contract:

- A session MUST be refused once idle for ``idle`` (default 30 minutes) or ``absolute`` after
  login (default 12 hours), whatever the cookie says about itself beyond its signed times.
- Logging out MUST revoke the session id (a copied cookie stops working) wherever the
  revocations are kept: in this process (``MemoryRevocations``, the default), or in a store
  every process serving the console shares (the gateway's ``PgRevocations`` with ``[shared]``),
  so that a logout on one instance is honoured by all. A revocation is kept until the session
  would have expired anyway. ``SessionCodec.open`` checks revocations; ``decode`` does not.
- Every session, even before login, carries a random CSRF token; logging in issues a new session
  id and a new token (no session fixation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from fedgate.errors import FedgateError

__all__ = [
    "ABSOLUTE_TIMEOUT",
    "IDLE_TIMEOUT",
    "SECRET_FILE",
    "MemoryRevocations",
    "Revocations",
    "Session",
    "SessionCodec",
    "load_secret_key",
]

SECRET_FILE = "console-secret.key"  # noqa: S105 - a file name, not a secret
IDLE_TIMEOUT = timedelta(minutes=30)
ABSOLUTE_TIMEOUT = timedelta(hours=12)
_KEY_BYTES = 32
_MAX_COOKIE = 4096


def load_secret_key(state_dir: Path) -> bytes:
    """The console's cookie key from ``state_dir``, made (mode 0600) on first use.

    Raises ``FedgateError`` (reason ``SECRET_KEY_UNSAFE``) when the file is readable by group
    or others or has the wrong size: a key others can read signs anyone's session.
    """
    path = Path(state_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(_KEY_BYTES))
            out.flush()
            os.fsync(out.fileno())
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FedgateError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}): chmod 600 it",
            reason="SECRET_KEY_UNSAFE",
        )
    key = path.read_bytes()
    if len(key) != _KEY_BYTES:
        raise FedgateError(f"{path} is not a {_KEY_BYTES}-byte key", reason="SECRET_KEY_UNSAFE")
    return key


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's session; ``user_id`` is empty before login."""

    sid: str
    csrf: str
    issued_at: float
    seen_at: float
    user_id: str = ""
    member_id: str = ""
    role: str = ""
    display_name: str = ""

    @property
    def authenticated(self) -> bool:
        return bool(self.user_id)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Revocations(Protocol):
    """Where logged-out session ids are kept until ``until`` (POSIX seconds). Implementations
    raise ``AuditUnavailable`` when they cannot answer (the console then refuses the request:
    fail closed)."""

    async def revoke(self, sid: str, *, until: float, now: float) -> None:
        """Refuse ``sid`` until ``until``; forget what expired before ``now``."""
        ...

    async def is_revoked(self, sid: str, *, now: float) -> bool: ...


class MemoryRevocations:
    """The revocations of one process, forgotten once they would have expired anyway."""

    def __init__(self) -> None:
        self._revoked: dict[str, float] = {}

    async def revoke(self, sid: str, *, until: float, now: float) -> None:
        self._revoked = {s: u for s, u in self._revoked.items() if u > now}
        self._revoked[sid] = until

    async def is_revoked(self, sid: str, *, now: float) -> bool:
        until = self._revoked.get(sid)
        return until is not None and until > now


class SessionCodec:
    """Makes, signs, checks and revokes sessions for one console."""

    def __init__(
        self,
        key: bytes,
        *,
        clock: Callable[[], datetime] | None = None,
        idle: timedelta = IDLE_TIMEOUT,
        absolute: timedelta = ABSOLUTE_TIMEOUT,
        revocations: Revocations | None = None,
    ) -> None:
        if len(key) < 16:
            raise ValueError("the session key must be at least 16 bytes")
        self._key = hashlib.sha256(b"fedgate/web/session\n" + key).digest()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._idle = idle.total_seconds()
        self._absolute = absolute.total_seconds()
        self._revocations = revocations or MemoryRevocations()

    def now(self) -> float:
        return self._clock().timestamp()

    def anonymous(self) -> Session:
        """A new session before login (it carries only a CSRF token)."""
        now = self.now()
        return Session(
            sid=secrets.token_urlsafe(16),
            csrf=secrets.token_urlsafe(24),
            issued_at=now,
            seen_at=now,
        )

    def login(self, *, user_id: str, member_id: str, role: str, display_name: str) -> Session:
        """A new session for a user who just logged in: new id, new CSRF token."""
        return replace(
            self.anonymous(),
            user_id=user_id,
            member_id=member_id,
            role=role,
            display_name=display_name,
        )

    def touch(self, session: Session) -> Session:
        """The session seen now (resets the idle timer)."""
        return replace(session, seen_at=self.now())

    def encode(self, session: Session) -> str:
        body = json.dumps(asdict(session), separators=(",", ":"), ensure_ascii=True).encode()
        mac = hmac.new(self._key, body, hashlib.sha256).digest()
        return f"{_b64(body)}.{_b64(mac)}"

    async def open(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or ``None`` when missing, forged, expired or revoked.
        Raises ``AuditUnavailable`` when the revocations cannot be read."""
        session = self.decode(cookie)
        if session is None or await self._revocations.is_revoked(session.sid, now=self.now()):
            return None
        return session

    def decode(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or ``None`` when missing, forged or expired (revocations
        are ``open``'s)."""
        if not cookie or len(cookie) > _MAX_COOKIE or cookie.count(".") != 1:
            return None
        body_b64, mac_b64 = cookie.split(".")
        try:
            body = _unb64(body_b64)
            mac = _unb64(mac_b64)
        except (binascii.Error, ValueError):
            return None
        if not hmac.compare_digest(mac, hmac.new(self._key, body, hashlib.sha256).digest()):
            return None
        try:
            session = Session(**json.loads(body))
        except (ValueError, TypeError):
            return None
        now = self.now()
        if not session.issued_at <= now + 60 or now - session.issued_at > self._absolute:
            return None
        if session.authenticated and now - session.seen_at > self._idle:
            return None
        return session

    async def revoke(self, session: Session) -> None:
        """Refuse this session id from now on (logout), until it would have expired anyway.
        Raises ``AuditUnavailable`` when the revocation cannot be stored."""
        await self._revocations.revoke(
            session.sid, until=session.issued_at + self._absolute, now=self.now()
        )
