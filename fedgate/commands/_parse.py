"""Syntax of option values of the police commands: times, durations, amounts, request ids,
and a parser that takes ``-30d`` as a value. Each parser raises ``ArgumentTypeError`` naming
the bad text; the gateway validates the meaning.
"""

from __future__ import annotations

import argparse
import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from fedgate.render import CST
from fedgate.v1 import common_pb2

__all__ = [
    "PoliceParser",
    "money",
    "parse_account",
    "parse_amount",
    "parse_duration",
    "parse_request_id",
    "parse_time",
    "timestamp",
]

_RELATIVE = re.compile(r"([+-])(\d+)([smhdw])")
_DURATION = re.compile(r"(?:\d+[smhdw])+")
_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]{1,2})?")
_MAX_INT64 = 2**63 - 1
_GROUPING = re.compile(r"[\s\-\u3000]")
_ACCOUNT = re.compile(r"[0-9]{8,32}")


def parse_account(text: str) -> str:
    """A card or account number as people write it: digits, optionally in groups separated by
    spaces or hyphens (``6217 0053 …``); returns the digits alone."""
    digits = _GROUPING.sub("", text)
    if not _ACCOUNT.fullmatch(digits):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an account number: 8 to 32 digits, in groups if you like"
        )
    return digits


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """A timezone-aware time from ISO 8601, ``now`` or ``±N[smhdw]`` relative to now.

    ISO times without an offset are China Standard Time. Raises ``ArgumentTypeError``."""
    now = now or datetime.now(UTC)
    value = text.strip()
    if value == "now":
        return now
    relative = _RELATIVE.fullmatch(value)
    if relative is not None:
        sign, count, unit = relative.groups()
        delta = timedelta(**{_UNITS[unit]: int(count)})
        return now + delta if sign == "+" else now - delta
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601 (2026-11-27T10:00:00+08:00), now, or -30d"
        ) from exc
    return parsed if parsed.utcoffset() is not None else parsed.replace(tzinfo=CST)


def parse_duration(text: str) -> timedelta:
    """``24h``, ``30m``, ``1d12h``, ``2w`` as a positive ``timedelta``; ``ArgumentTypeError``."""
    value = text.strip()
    if _DURATION.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 24h, 30m or 1d12h")
    total = timedelta()
    for count, unit in _DURATION_PART.findall(value):
        total += timedelta(**{_UNITS[unit]: int(count)})
    if total <= timedelta():
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return total


def parse_amount(text: str) -> int:
    """An amount in yuan (``1234.56``, at most 2 decimals) as fen; ``ArgumentTypeError``."""
    value = text.strip()
    if _AMOUNT.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an amount in yuan: digits with at most 2 decimals, e.g. 1234.56"
        )
    try:
        fen = int(Decimal(value) * 100)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount") from exc
    if fen > _MAX_INT64:
        raise argparse.ArgumentTypeError(f"{text!r} is too large an amount")
    return fen


def parse_request_id(text: str) -> str:
    """A request or ticket id in canonical UUID form; ``ArgumentTypeError`` otherwise."""
    try:
        value = str(uuid.UUID(text.strip()))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a request id (a UUID)") from exc
    return value


def timestamp(at: datetime) -> Timestamp:
    """``at`` as a protobuf ``Timestamp``."""
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def money(fen: int, currency: str = "CNY") -> common_pb2.Money:
    """``fen`` minor units of ``currency``."""
    return common_pb2.Money(currency=currency, minor_units=fen)


_NEGATIVE_VALUE = re.compile(r"^-\d+$|^-\d*\.\d+$|^-\d+[smhdw]$")


class PoliceParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` that takes ``-30d`` (a relative time) as a value, as it takes
    ``-5``, instead of as an unknown option."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_VALUE
