"""Validators for the identifiers and values of the anti-fraud domain.

Each predicate is a pure function returning ``bool``; :class:`FieldChecker`
collects the failures of one request and raises a single
:class:`fedgate.errors.InvalidArgument` that names every bad field.

Formats checked:

- bank card numbers: 16-19 digits, a Luhn check digit, an issuer prefix of a
  federation bank (:data:`BANK_BINS`);
- resident ID numbers (GB 11643-1999): 17 digits and a check digit, a region
  code not starting with 0 and a real birth date;
- mobile numbers: 11 digits, a carrier prefix (:data:`CARRIER_PREFIXES`);
- police case numbers (:data:`CASE_NUMBER_RE`);
- amounts in minor units (fen) and ISO 4217 currency codes.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from fedgate.errors import FieldViolation, InvalidArgument
from fedgate.types import CaseNumber

__all__ = [
    "BANK_BINS",
    "CARRIER_PREFIXES",
    "CASE_NUMBER_RE",
    "CURRENCIES",
    "MAX_AMOUNT_MINOR",
    "FieldChecker",
    "amount_valid",
    "bank_card_valid",
    "bank_of_card",
    "carrier_of_mobile",
    "case_number",
    "case_number_valid",
    "currency_valid",
    "luhn_check_digit",
    "luhn_valid",
    "mobile_valid",
    "resident_id_check_digit",
    "resident_id_valid",
    "window_valid",
]

# --------------------------------------------------------------------------- Luhn


def _luhn_sum(digits: str, *, double_first: bool) -> int:
    """Luhn sum of ``digits`` read right to left; ``double_first`` doubles the rightmost."""
    total = 0
    double = double_first
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        double = not double
    return total


def luhn_valid(number: str) -> bool:
    """True if ``number`` is two or more ASCII digits ending in its Luhn check digit."""
    if len(number) < 2 or not number.isascii() or not number.isdigit():
        return False
    return _luhn_sum(number, double_first=False) % 10 == 0


def luhn_check_digit(partial: str) -> str:
    """The Luhn check digit to append to ``partial`` (ASCII digits only).

    Raises ``ValueError`` if ``partial`` is empty or not all digits.
    """
    if not partial or not partial.isascii() or not partial.isdigit():
        raise ValueError("partial must be a non-empty string of digits")
    return str((10 - _luhn_sum(partial, double_first=True) % 10) % 10)


# --------------------------------------------------------------------------- resident IDs

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"
_EARLIEST_BIRTH = date(1900, 1, 1)


def resident_id_check_digit(first17: str) -> str:
    """The GB 11643-1999 check character (``0``-``9`` or ``X``) for 17 ASCII digits.

    Raises ``ValueError`` if ``first17`` is not exactly 17 digits.
    """
    if len(first17) != 17 or not first17.isascii() or not first17.isdigit():
        raise ValueError("first17 must be exactly 17 digits")
    total = sum((ord(ch) - 48) * w for ch, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def resident_id_valid(id_number: str, *, today: date | None = None) -> bool:
    """True for an 18-character resident ID number with a correct check character.

    Also requires a region code (first six digits) not starting with 0 and a
    birth date (characters 7-14, ``YYYYMMDD``) that exists, is not before 1900
    and not after ``today`` (default: the current date). The check character
    ``X`` must be upper case.
    """
    if len(id_number) != 18 or not id_number.isascii():
        return False
    first17 = id_number[:17]
    if not first17.isdigit() or first17[0] == "0":
        return False
    try:
        born = date(int(first17[6:10]), int(first17[10:12]), int(first17[12:14]))
    except ValueError:
        return False
    if born < _EARLIEST_BIRTH or born > (today or date.today()):
        return False
    return id_number[17] == resident_id_check_digit(first17)


# --------------------------------------------------------------------------- bank cards

BANK_BINS: dict[str, tuple[str, ...]] = {
    "bank.icbc": ("622202", "621226", "622208"),
    "bank.ccb": ("621700", "622700", "436742"),
    "bank.abc": ("622848", "622845", "103"),
    "bank.gzrcb": ("622439", "621058"),
}
"""Issuer prefixes (BINs) of the federation's banks, by member id.

The ICBC, CCB and ABC prefixes are published debit-card BINs; the Guangzhou
Rural Commercial Bank ones are plausible regional prefixes. No prefix is a
prefix of another, so a card maps to at most one bank.
"""

_BIN_TO_BANK: dict[str, str] = {p: bank for bank, ps in BANK_BINS.items() for p in ps}
_BIN_LENGTHS = sorted({len(p) for p in _BIN_TO_BANK}, reverse=True)


def bank_of_card(number: str) -> str | None:
    """The member id of the bank whose issuer prefix starts ``number``, if any.

    Looks at the prefix only; use :func:`bank_card_valid` for the full check.
    """
    for n in _BIN_LENGTHS:
        bank = _BIN_TO_BANK.get(number[:n])
        if bank is not None:
            return bank
    return None


def bank_card_valid(number: str) -> bool:
    """True for 16-19 ASCII digits with a Luhn check digit and a known issuer prefix."""
    return 16 <= len(number) <= 19 and luhn_valid(number) and bank_of_card(number) is not None


# --------------------------------------------------------------------------- mobile numbers


def _ranges(spec: str) -> tuple[str, ...]:
    """Expand ``"134-139 147"`` into the three-digit prefixes it names."""
    out: list[str] = []
    for part in spec.split():
        lo, _, hi = part.partition("-")
        out.extend(str(p) for p in range(int(lo), int(hi or lo) + 1))
    return tuple(out)


CARRIER_PREFIXES: dict[str, tuple[str, ...]] = {
    "carrier.cmcc": _ranges("134-139 147 150-152 157-159 172 178 182-184 187-188 198"),
    "carrier.cucc": _ranges("130-132 145 155-156 166 175-176 185-186"),
    "carrier.ctcc": _ranges("133 149 153 173 177 180-181 189 191 199"),
}
"""Three-digit number prefixes allotted to each carrier, by member id."""

_PREFIX_TO_CARRIER: dict[str, str] = {
    p: carrier for carrier, ps in CARRIER_PREFIXES.items() for p in ps
}


def carrier_of_mobile(number: str) -> str | None:
    """The member id of the carrier owning ``number``'s range, or None if it is not a mobile."""
    if len(number) != 11 or not number.isascii() or not number.isdigit():
        return None
    return _PREFIX_TO_CARRIER.get(number[:3])


def mobile_valid(number: str) -> bool:
    """True for 11 ASCII digits starting with 1 under a known carrier prefix."""
    return carrier_of_mobile(number) is not None


# --------------------------------------------------------------------------- case numbers

CASE_NUMBER_RE = re.compile(
    r"A(?P<organ>[1-9]\d{11})(?P<year>(?:19|20)\d{2})(?P<month>0[1-9]|1[0-2])(?P<serial>\d{5})"
)
"""A police case number (案件编号), 24 characters, matched whole:

``A`` · 12-digit public-security organ code (机关代码, not starting with 0) ·
4-digit year (19xx or 20xx) · 2-digit month (01-12) · 5-digit serial.
Example: ``A`` ``440100000000`` ``2026`` ``11`` ``00001``, written
``A44010000000020261100001``.
"""


def case_number_valid(s: str) -> bool:
    """True if ``s`` is a whole police case number (see :data:`CASE_NUMBER_RE`)."""
    return s.isascii() and CASE_NUMBER_RE.fullmatch(s) is not None


def case_number(s: str, *, field: str = "case_number") -> CaseNumber:
    """``s`` as a :class:`~fedgate.types.CaseNumber`; ``InvalidArgument`` naming ``field``."""
    if not case_number_valid(s):
        raise InvalidArgument.for_fields(
            [
                FieldViolation(
                    field, "not a case number: A + 12-digit organ code + YYYYMM + 5 digits"
                )
            ]
        )
    return CaseNumber(s)


# --------------------------------------------------------------------------- money

MAX_AMOUNT_MINOR = 10**13
"""The largest amount accepted, in minor units (10^13 fen = 100 billion yuan)."""

_ISO_4217 = """
AED AFN ALL AMD AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN BWP BYN
BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL
GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF
KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN
MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD
SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH
UGX USD UYU UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
"""

CURRENCIES: frozenset[str] = frozenset(_ISO_4217.split())
"""ISO 4217 alpha-3 codes of circulating currencies.

Fund codes (e.g. ``CLF``), precious metals (``XAU``), the test code ``XTS``
and ``XXX`` are left out: none of them is money a person transfers.
"""


def amount_valid(minor_units: int) -> bool:
    """True for an ``int`` (not ``bool``) amount in minor units with 0 < amount <= 10^13."""
    return type(minor_units) is int and 0 < minor_units <= MAX_AMOUNT_MINOR


def currency_valid(code: str) -> bool:
    """True for an upper-case ISO 4217 alpha-3 code of a circulating currency, e.g. ``CNY``."""
    return code in CURRENCIES


# --------------------------------------------------------------------------- time windows


def window_valid(start: datetime, end: datetime, *, max_span: timedelta | None = None) -> bool:
    """True if both ends are timezone-aware, ``start < end``, and the span fits ``max_span``."""
    if start.utcoffset() is None or end.utcoffset() is None or not start < end:
        return False
    return max_span is None or end - start <= max_span


# --------------------------------------------------------------------------- collector


class FieldChecker:
    """Collects field violations so one request reports all its bad fields at once.

    >>> c = FieldChecker()
    >>> c.check("phone_number", mobile_valid("13800138000"), "not a mobile number")
    >>> c.raise_if_any()
    """

    __slots__ = ("_violations",)

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def check(self, field: str, ok: bool, description: str) -> None:
        """Record a violation of ``field`` with ``description`` unless ``ok``."""
        if not ok:
            self._violations.append(FieldViolation(field, description))

    @property
    def violations(self) -> tuple[FieldViolation, ...]:
        """The violations recorded so far, in order."""
        return tuple(self._violations)

    def raise_if_any(self) -> None:
        """Raise ``InvalidArgument`` listing every recorded violation, if there is one."""
        if self._violations:
            raise InvalidArgument.for_fields(tuple(self._violations))
