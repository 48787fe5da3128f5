"""Masking and JSON logs: no identifier reaches a log line in clear."""

from __future__ import annotations

import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fedgate.logs import JsonLogFormatter, mask, mask_identifiers, masked_span


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
        for text in ("at 2026-12-04 18:14:14", "2026-11-22 14:03", "sha 0a12345678901b"):
            assert mask_identifiers(text) == text

    @pytest.mark.parametrize(
        ("text", "masked"),
        [
            ("no account 6222 0212 3456 7891 234 here", "no account 622****1234 here"),
            ("no account 6222-0212-3456-7891-234", "no account 622****1234"),
            ("call 138 1234 5678.", "call 138****5678."),
            ("call 138-1234-5678", "call 138****5678"),
            ("id 4401 0619 8805 1700 1X", "id 440****001X"),
            ("id 440106 19880517 001x ok", "id 440****001x ok"),
            ("acct 62220212345678901234567", "acct 622****4567"),
            ("acct 6222\u00a00212\u00a03456\u00a07891", "acct 622****7891"),
        ],
    )
    def test_grouped_and_overlong_identifiers(self, text: str, masked: str) -> None:
        assert mask_identifiers(text) == masked

    @given(
        st.from_regex(r"\A(62\d{14,28}|1[3-9]\d{9}|\d{17}[\dX])\Z"),
        st.sampled_from([" ", "-", "\u00a0"]),
        st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=8),
    )
    def test_no_grouped_identifier_survives(
        self, value: str, separator: str, cuts: list[int]
    ) -> None:
        groups, rest = [], value
        for cut in cuts:
            if len(rest) <= cut:
                break
            groups.append(rest[:cut])
            rest = rest[cut:]
        written = separator.join([*groups, rest])
        masked = mask_identifiers(f"账号 {written} 查无")
        assert value not in masked.replace(separator, "")
        digits = re.sub(r"\D", "", masked)
        assert len(digits) <= 7, masked


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


class TestMaskedSpan:
    def test_an_exception_is_recorded_with_identifiers_masked(self) -> None:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test")
        with pytest.raises(ValueError, match="6222"), masked_span(tracer, "work"):
            raise ValueError("no account 6222 0212 3456 7891 234 for 440106198805170013")
        (span,) = exporter.get_finished_spans()
        (event,) = span.events
        assert event.name == "exception"
        attributes = dict(event.attributes or {})
        assert attributes["exception.type"] == "ValueError"
        assert attributes["exception.message"] == "no account 622****1234 for 440****0013"
        recorded = " ".join(str(v) for v in attributes.values())
        recorded += str(span.status.description)
        assert "6222 0212" not in recorded
        assert "440106198805170013" not in recorded
        assert span.status.status_code == StatusCode.ERROR
