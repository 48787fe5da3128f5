"""How the consoles write identifiers, times and money: masked, in Beijing time, in yuan."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Final

__all__ = ["BEIJING", "format_money", "format_time", "mask_identifier"]

BEIJING: Final = timezone(timedelta(hours=8), "CST")
"""China Standard Time (UTC+8, no daylight saving): the time zone pages show."""


def mask_identifier(value: str) -> str:
    """``6222021234567890123`` → ``622************0123`` (first 3, last 4); values of 7
    characters or fewer are masked entirely."""
    if len(value) <= 7:
        return "*" * len(value)
    return value[:3] + "*" * (len(value) - 7) + value[-4:]


def format_time(at: datetime | None) -> str:
    """Beijing time to the minute (``2026-11-22 14:03``); empty for ``None``."""
    if at is None:
        return ""
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def format_money(minor_units: int, currency: str) -> str:
    sign = "-" if minor_units < 0 else ""
    whole, fen = divmod(abs(minor_units), 100)
    return f"{sign}{whole:,}.{fen:02d} {currency}"
