"""Console views of answers: identifiers masked in free text, codes and enum values in the
reader's language, rows entered by hand."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fedgate.errors import InvalidArgument
from fedgate.v1 import bank_pb2, common_pb2, request_pb2
from fedgate.web.protoview import FieldView, TableView, describe, form_tables, parse_form


class TestWords:
    @pytest.mark.parametrize(
        ("lang", "role", "direction"), [("zh", "调查民警", "转入"), ("en", "investigator", "in")]
    )
    def test_codes_and_enums_in_both_languages(self, lang: str, role: str, direction: str) -> None:
        person = common_pb2.Person(id="440100123", role=common_pb2.ROLE_POLICE_INVESTIGATOR)
        (shown,) = [i for i in describe(person, lang, reveal=True) if i.name == "role"]
        assert isinstance(shown, FieldView)
        assert shown.text == role
        result = bank_pb2.TransactionsResult(
            transactions=[bank_pb2.Transaction(transaction_id="t", direction="in")]
        )
        (table,) = [i for i in describe(result, lang, reveal=True) if isinstance(i, TableView)]
        assert direction in table.rows[0]


class TestRowsByHand:
    NOW = datetime(2026, 12, 1, tzinfo=UTC)

    def form(self, **typed: str) -> dict[str, str]:
        return {"r.transactions.rows": "2", **typed}

    def test_the_form_has_the_backend_rows_then_blank_ones(self) -> None:
        prefill = bank_pb2.TransactionsResult(
            transactions=[bank_pb2.Transaction(transaction_id="a")]
        )
        (table,) = form_tables(bank_pb2.TransactionsResult.DESCRIPTOR, prefill, "zh")
        assert len(table.rows) == 4
        assert table.rows[0][0].value == "a"
        direction = next(f for f in table.rows[3] if f.name.endswith(".direction"))
        assert direction.kind == "select"
        assert [v for v, _ in direction.choices] == ["in", "out"]

    def test_a_row_is_read_and_a_blank_row_skipped(self) -> None:
        typed = self.form(**{
            "r.transactions.0.transaction_id": "H1", "r.transactions.0.time": "2026-11-20T10:15",
            "r.transactions.0.direction": "out", "r.transactions.0.amount": "12.34",
            "r.transactions.0.amount.currency": "CNY", "r.transactions.1.amount.currency": "CNY",
        })  # fmt: skip
        result = bank_pb2.TransactionsResult()
        parse_form(result, lambda k: typed.get(k, ""), now=self.NOW)
        assert len(result.transactions) == 1
        row = result.transactions[0]
        assert (row.transaction_id, row.direction, row.amount.minor_units) == ("H1", "out", 1234)

    @pytest.mark.parametrize(
        ("changes", "problem"),
        [
            ({"r.transactions.0.direction": ""}, "transactions[1].direction"),
            ({"r.transactions.0.direction": "sideways"}, "transactions[1].direction"),
            ({"r.transactions.0.amount": "12.345"}, "transactions[1].amount"),
            ({"r.transactions.0.time": "2027-01-01T00:00"}, "transactions[1].time"),
            ({"r.transactions.0.time": ""}, "transactions[1].time"),
        ],
    )
    def test_a_bad_row_is_refused_naming_row_and_field(
        self, changes: dict[str, str], problem: str
    ) -> None:
        typed = self.form(**{
            "r.transactions.0.transaction_id": "H1", "r.transactions.0.time": "2026-11-20T10:15",
            "r.transactions.0.direction": "out", "r.transactions.0.amount": "12.34",
            **changes,
        })  # fmt: skip
        with pytest.raises(InvalidArgument) as caught:
            parse_form(bank_pb2.TransactionsResult(), lambda k: typed.get(k, ""), now=self.NOW)
        assert problem in [v.field for v in caught.value.violations]


def _texts(message: request_pb2.Response, *, reveal: bool) -> dict[str, str]:
    return {
        item.name: item.text
        for item in describe(message, "en", reveal=reveal)
        if isinstance(item, FieldView)
    }


class TestFreeText:
    def test_identifiers_in_free_text_are_masked_until_revealed(self) -> None:
        response = request_pb2.Response(
            request_id="r-1",
            detail="no account 6222 0212 3456 7891 234; call 138-1234-5678",
        )
        masked = _texts(response, reveal=False)
        assert masked["detail"] == "no account 622****1234; call 138****5678"
        clear = _texts(response, reveal=True)
        assert clear["detail"] == response.detail

    def test_text_without_identifiers_is_unchanged(self) -> None:
        response = request_pb2.Response(request_id="r-1", detail="不符合协查条件 (ticket 12)")
        assert _texts(response, reveal=False)["detail"] == "不符合协查条件 (ticket 12)"
