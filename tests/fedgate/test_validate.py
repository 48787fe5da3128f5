"""Tests for fedgate.validate: validators accept what they should and reject each corruption."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedgate.errors import InvalidArgument
from fedgate.validate import (
    BANK_BINS,
    CARRIER_PREFIXES,
    CASE_NUMBER_RE,
    CURRENCIES,
    MAX_AMOUNT_MINOR,
    FieldChecker,
    amount_valid,
    bank_card_valid,
    bank_of_card,
    carrier_of_mobile,
    case_number,
    case_number_valid,
    currency_valid,
    luhn_check_digit,
    luhn_valid,
    mobile_valid,
    resident_id_check_digit,
    resident_id_valid,
    window_valid,
)

digits = st.text(alphabet="0123456789", min_size=1, max_size=30)


def _other_digit(ch: str, k: int) -> str:
    """A digit different from ``ch`` (``k`` picks which)."""
    return str((int(ch) + 1 + k % 9) % 10)


def _with_luhn(partial: str) -> str:
    return partial + luhn_check_digit(partial)


class TestLuhn:
    def test_known_numbers(self) -> None:
        assert luhn_valid("79927398713")
        assert luhn_check_digit("7992739871") == "3"
        assert not luhn_valid("79927398710")

    @pytest.mark.parametrize("bad", ["", "0", "12a4", "７９９２７３９８７１３", " 79927398713"])
    def test_rejects_non_digits_and_short(self, bad: str) -> None:
        assert not luhn_valid(bad)

    @pytest.mark.parametrize("bad", ["", "12x"])
    def test_check_digit_needs_digits(self, bad: str) -> None:
        with pytest.raises(ValueError, match="digits"):
            luhn_check_digit(bad)

    @given(digits)
    def test_generated_numbers_pass(self, partial: str) -> None:
        assert luhn_valid(_with_luhn(partial))

    @given(digits, st.data())
    def test_any_single_digit_change_fails(self, partial: str, data: st.DataObject) -> None:
        number = _with_luhn(partial)
        i = data.draw(st.integers(0, len(number) - 1))
        k = data.draw(st.integers(0, 8))
        changed = number[:i] + _other_digit(number[i], k) + number[i + 1 :]
        assert not luhn_valid(changed)

    @given(st.text(alphabet="0123456789", min_size=2, max_size=30), st.data())
    def test_adjacent_transposition_mostly_fails(self, partial: str, data: st.DataObject) -> None:
        number = _with_luhn(partial)
        i = data.draw(st.integers(0, len(number) - 2))
        a, b = number[i], number[i + 1]
        swapped = number[:i] + b + a + number[i + 2 :]
        # Luhn misses only equal digits and the 0<->9 swap.
        if a != b and {a, b} != {"0", "9"}:
            assert not luhn_valid(swapped)


regions = st.integers(100000, 999999).map(str)
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31))


def _resident(region: str, born: date, seq: int) -> str:
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + resident_id_check_digit(first17)


class TestResidentId:
    def test_standard_example(self) -> None:
        assert resident_id_check_digit("11010519491231002") == "X"
        assert resident_id_valid("11010519491231002X")

    @pytest.mark.parametrize(
        ("value", "why"),
        [
            ("11010519491231002x", "lower-case check character"),
            ("11010519491231002", "17 characters"),
            ("11010519491231002X1", "19 characters"),
            ("01010519491231002" + resident_id_check_digit("01010519491231002"), "region 0"),
            ("11010519490230002" + resident_id_check_digit("11010519490230002"), "30 February"),
            ("11010518991231002" + resident_id_check_digit("11010518991231002"), "before 1900"),
            ("1101051949123100AX", "letter in the body"),
        ],
    )
    def test_rejects(self, value: str, why: str) -> None:
        assert not resident_id_valid(value), why

    def test_rejects_future_birth(self) -> None:
        number = _resident("440106", date(2026, 6, 1), 12)
        assert resident_id_valid(number, today=date(2026, 6, 1))
        assert not resident_id_valid(number, today=date(2026, 5, 31))

    @pytest.mark.parametrize(
        "bad", ["1234567890123456", "1234567890123456789", "12345678901234567X"]
    )
    def test_check_digit_needs_17_digits(self, bad: str) -> None:
        with pytest.raises(ValueError, match="17 digits"):
            resident_id_check_digit(bad)

    @given(regions, births, st.integers(0, 999))
    def test_generated_ids_pass(self, region: str, born: date, seq: int) -> None:
        assert resident_id_valid(_resident(region, born, seq))

    @given(regions, births, st.integers(0, 999), st.data())
    def test_any_single_change_fails(
        self, region: str, born: date, seq: int, data: st.DataObject
    ) -> None:
        number = _resident(region, born, seq)
        i = data.draw(st.integers(0, 17))
        if i == 17:
            choice = data.draw(st.sampled_from([c for c in "0123456789X" if c != number[17]]))
        else:
            choice = _other_digit(number[i], data.draw(st.integers(0, 8)))
        assert not resident_id_valid(number[:i] + choice + number[i + 1 :])


def _card(prefix: str, body: int, length: int) -> str:
    return _with_luhn(f"{prefix}{body:0{length - 1 - len(prefix)}d}"[: length - 1])


bins = st.sampled_from([(bank, p) for bank, ps in BANK_BINS.items() for p in ps])


class TestBankCard:
    def test_no_prefix_shadows_another(self) -> None:
        prefixes = [p for ps in BANK_BINS.values() for p in ps]
        for a in prefixes:
            for b in prefixes:
                assert a == b or not b.startswith(a)

    def test_known_card(self) -> None:
        card = _card("622202", 123456789012, 19)
        assert bank_card_valid(card)
        assert bank_of_card(card) == "bank.icbc"

    @given(bins, st.integers(0, 10**12 - 1), st.integers(16, 19))
    def test_generated_cards_pass(self, bin_: tuple[str, str], body: int, length: int) -> None:
        bank, prefix = bin_
        card = _card(prefix, body, length)
        assert bank_card_valid(card)
        assert bank_of_card(card) == bank

    @given(bins, st.integers(0, 10**12 - 1), st.data())
    def test_any_single_digit_change_fails(
        self, bin_: tuple[str, str], body: int, data: st.DataObject
    ) -> None:
        card = _card(bin_[1], body, 19)
        i = data.draw(st.integers(0, 18))
        changed = card[:i] + _other_digit(card[i], data.draw(st.integers(0, 8))) + card[i + 1 :]
        assert not bank_card_valid(changed)

    @pytest.mark.parametrize(
        ("card", "why"),
        [
            (_card("622202", 1, 15), "15 digits"),
            (_card("622202", 1, 20), "20 digits"),
            (_card("999999", 1, 19), "unknown issuer"),
            (_card("622202", 1, 19)[:-1] + "x", "letter"),
        ],
    )
    def test_rejects(self, card: str, why: str) -> None:
        assert not bank_card_valid(card), why

    def test_bank_of_unknown_prefix(self) -> None:
        assert bank_of_card("5555555555554444") is None


class TestMobile:
    def test_prefixes_are_disjoint_and_three_digits(self) -> None:
        seen: dict[str, str] = {}
        for carrier, prefixes in CARRIER_PREFIXES.items():
            for p in prefixes:
                assert len(p) == 3
                assert p.startswith("1")
                assert seen.setdefault(p, carrier) == carrier

    @pytest.mark.parametrize(
        ("number", "carrier"),
        [
            ("13800138000", "carrier.cmcc"),
            ("19812345678", "carrier.cmcc"),
            ("18612345678", "carrier.cucc"),
            ("16612345678", "carrier.cucc"),
            ("18912345678", "carrier.ctcc"),
            ("19912345678", "carrier.ctcc"),
        ],
    )
    def test_carrier_of(self, number: str, carrier: str) -> None:
        assert mobile_valid(number)
        assert carrier_of_mobile(number) == carrier

    @pytest.mark.parametrize(
        "bad", ["1380013800", "138001380000", "12012345678", "10012345678", "1380013800a", ""]
    )
    def test_rejects(self, bad: str) -> None:
        assert not mobile_valid(bad)
        assert carrier_of_mobile(bad) is None

    @given(
        st.sampled_from([(c, p) for c, ps in CARRIER_PREFIXES.items() for p in ps]),
        st.integers(0, 10**8 - 1),
    )
    def test_generated_numbers_pass(self, cp: tuple[str, str], rest: int) -> None:
        carrier, prefix = cp
        assert carrier_of_mobile(f"{prefix}{rest:08d}") == carrier


class TestCaseNumber:
    example = "A44010000000020261100001"

    def test_example(self) -> None:
        assert len(self.example) == 24
        assert case_number_valid(self.example)
        match = CASE_NUMBER_RE.fullmatch(self.example)
        assert match is not None
        assert match["organ"] == "440100000000"
        assert (match["year"], match["month"], match["serial"]) == ("2026", "11", "00001")

    @pytest.mark.parametrize(
        "bad",
        [
            "A4401000000002026110000",  # 23 characters
            "A440100000000202611000011",  # 25 characters
            "a44010000000020261100001",  # lower-case A
            "B44010000000020261100001",
            "A04010000000020261100001",  # organ code starting with 0
            "A44010000000020261300001",  # month 13
            "A44010000000020260000001",  # month 00
            "A44010000000018261100001",  # year 1826
            "A44010000000020261100001\n",
        ],
    )
    def test_rejects(self, bad: str) -> None:
        assert not case_number_valid(bad)

    def test_case_number_names_the_field(self) -> None:
        assert case_number(self.example) == self.example
        with pytest.raises(InvalidArgument, match=r"case\.number") as info:
            case_number("A1", field="case.number")
        assert info.value.violations[0].field == "case.number"


class TestMoney:
    @pytest.mark.parametrize("ok", [1, 100, MAX_AMOUNT_MINOR])
    def test_amounts_accepted(self, ok: int) -> None:
        assert amount_valid(ok)

    @pytest.mark.parametrize("bad", [0, -1, MAX_AMOUNT_MINOR + 1, True])
    def test_amounts_refused(self, bad: int) -> None:
        assert not amount_valid(bad)

    def test_float_refused(self) -> None:
        value: object = 1.0
        assert not amount_valid(value)  # type: ignore[arg-type]

    @pytest.mark.parametrize("code", ["CNY", "USD", "EUR", "HKD", "MOP", "TWD"])
    def test_currencies_accepted(self, code: str) -> None:
        assert currency_valid(code)

    @pytest.mark.parametrize("code", ["cny", "RMB", "XTS", "XXX", "XAU", "CN", "CNYY", ""])
    def test_currencies_refused(self, code: str) -> None:
        assert not currency_valid(code)

    def test_currency_codes_are_alpha3(self) -> None:
        assert all(len(c) == 3 and c.isalpha() and c.isupper() for c in CURRENCIES)


class TestWindow:
    t0 = datetime(2026, 11, 1, tzinfo=UTC)

    def test_accepts_ordered_aware(self) -> None:
        assert window_valid(self.t0, self.t0 + timedelta(days=30), max_span=timedelta(days=30))
        other_zone = timezone(timedelta(hours=8))
        assert window_valid(self.t0, (self.t0 + timedelta(seconds=1)).astimezone(other_zone))

    def test_refuses(self) -> None:
        assert not window_valid(self.t0, self.t0)
        assert not window_valid(self.t0 + timedelta(seconds=1), self.t0)
        assert not window_valid(self.t0.replace(tzinfo=None), self.t0)
        assert not window_valid(self.t0, self.t0 + timedelta(days=31), max_span=timedelta(days=30))


class TestFieldChecker:
    def test_nothing_to_raise(self) -> None:
        c = FieldChecker()
        c.check("phone_number", True, "unused")
        c.raise_if_any()
        assert c.violations == ()

    def test_raises_every_violation_in_order(self) -> None:
        c = FieldChecker()
        c.check("phone_number", mobile_valid("123"), "not a mobile number")
        c.check("amount", amount_valid(5), "unused")
        c.check("id_number", resident_id_valid("x"), "not a resident ID number")
        with pytest.raises(InvalidArgument, match="phone_number, id_number") as info:
            c.raise_if_any()
        assert [(v.field, v.description) for v in info.value.violations] == [
            ("phone_number", "not a mobile number"),
            ("id_number", "not a resident ID number"),
        ]
