"""Identifier types shared across fedgate (``NewType`` so they cannot be mixed up)."""

from __future__ import annotations

from datetime import timedelta, timezone
from typing import Final, NewType

__all__ = ["CHINA_TIME", "CaseNumber", "KeyId", "MemberId", "OfficerId", "RequestId"]

MemberId = NewType("MemberId", str)
"""A federation member, e.g. ``bank.icbc`` or ``police.gd.afc``."""

KeyId = NewType("KeyId", str)
"""An Ed25519 signing key's id: lowercase hex of the first 16 bytes of SHA-256(raw public key)."""

RequestId = NewType("RequestId", str)
"""A request's UUIDv7 in canonical text form."""

CaseNumber = NewType("CaseNumber", str)
"""A police case number (see ``fedgate.validate.case_number``)."""

OfficerId = NewType("OfficerId", str)
"""A police officer's badge number (警号)."""

CHINA_TIME: Final = timezone(timedelta(hours=8), "CST")
"""China Standard Time (UTC+8, no daylight saving): the time zone people read times in."""
