"""Masking and JSON logs: no identifier reaches a log line in clear."""

from __future__ import annotations

import json
import logging
import re

from hypothesis import given
from hypothesis import strategies as st

from fedgate.logs import JsonLogFormatter, mask, mask_identifiers


class TestMask:
    @given(st.text(alphabet="0123456789X", min_size=11, max_size=40))
    def test_long_values_keep_three_and_four(self, value: str) -> None:
        assert mask(value) == value[:3] + "****" + value[-4:]

    @given(st.text(min_size=8, max_size=10))
    def test_medium_values_keep_two_and_two(self, value: str) -> None:
        assert mask(value) == value[:2] + "****" + value[-2:]

    @given(st.text(min_size=1, max_size=7))
    def test_short_values_are_hidden(self, value: str) -> None:
        assert mask(value) == "****"

    def test_length_is_hidden(self) -> None:
        assert len(mask("6222021234567890")) == len(mask("6222021234567890123"))


class TestMaskIdentifiers:
    @given(
        st.lists(
            st.one_of(
                st.from_regex(r"\A1[3-9]\d{9}\Z"),
                st.from_regex(r"\A\d{17}[\dX]\Z"),
                st.from_regex(r"\A62\d{14,17}\Z"),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def test_no_identifier_survives(self, values: list[str]) -> None:
        text = "查询 " + " 和 ".join(values) + " 完成"
        masked = mask_identifiers(text)
        for value in values:
            assert value not in masked
        assert not re.search(r"\d{8,}", masked)

    def test_other_numbers_stay(self) -> None:
        assert mask_identifiers("took 1234 ms, 5 retries") == "took 1234 ms, 5 retries"


class TestJsonLogFormatter:
    def test_message_fields_and_exception_are_masked(self) -> None:
        try:
            raise ValueError("bad card 6222021234567890123")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "phone %s", ("13812345678",), exc_info
        )
        record.fields = {"ids": ["440106198805170013"], "n": 3}
        line = json.loads(JsonLogFormatter().format(record))
        assert line["message"] == "phone 138****5678"
        assert line["fields"] == {"ids": ["440****0013"], "n": 3}
        assert "6222021234567890123" not in line["exception"]
