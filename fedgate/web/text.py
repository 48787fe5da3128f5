"""How the consoles write identifiers, times and money: masked, in Beijing time, in yuan."""

from __future__ import annotations

from datetime import datetime
from typing import Final

from fedgate.logs import mask, mask_identifiers
from fedgate.types import CHINA_TIME

__all__ = ["BEIJING", "format_money", "format_time", "mask_identifier", "mask_text"]

BEIJING: Final = CHINA_TIME
"""China Standard Time (UTC+8, no daylight saving): the time zone pages show."""


mask_identifier = mask
"""Masks one identifier for display (``fedgate.logs.mask``)."""

mask_text = mask_identifiers
"""Masks every ID, card and mobile number inside free text (``fedgate.logs.mask_identifiers``)."""


def format_time(at: datetime | None) -> str:
    """Beijing time to the minute (``2026-11-22 14:03``); empty for ``None``."""
    if at is None:
        return ""
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M")


def format_money(minor_units: int, currency: str) -> str:
    sign = "-" if minor_units < 0 else ""
    whole, fen = divmod(abs(minor_units), 100)
    return f"{sign}{whole:,}.{fen:02d} {currency}"
