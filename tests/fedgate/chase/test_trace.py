"""The tracing rule by itself: lowest intermediate balance, the holder's own money spent first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fedgate.chase import Inflow, Posting, trace

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
VICTIM = "6222020000000000018"
MULE = "6217000000000000015"


def p(i: int, minutes: float, direction: str, amount: int, after: int, cp: str = "x") -> Posting:
    return Posting(
        i, T0 + timedelta(minutes=minutes), direction, amount, after, cp, "", "", "mobile", ""
    )


class TestTrace:
    def test_own_money_is_spent_first(self) -> None:
        postings = [
            p(0, 0, "in", 10_000, 10_500, VICTIM),  # 500 of own money before
            p(1, 1, "out", 300, 10_200),  # lunch: own money
            p(2, 3, "out", 9_000, 1_200, MULE),  # 200 own + 8 800 traced
        ]
        found = trace(postings, [Inflow(VICTIM, T0, 10_000, 10_000)])
        assert [(o.index, part) for o, part in found.outflows] == [(2, 8_800)]
        assert found.held == 1_200

    def test_nothing_before_the_traced_credit_counts(self) -> None:
        postings = [p(0, -5, "out", 700, 0), p(1, 0, "in", 5_000, 5_000, VICTIM)]
        found = trace(postings, [Inflow(VICTIM, T0, 5_000, 5_000)])
        assert found.outflows == ()
        assert found.held == 5_000

    def test_a_partly_traced_credit_adds_the_rest_to_own_money(self) -> None:
        postings = [p(0, 0, "in", 1_000, 1_000, VICTIM), p(1, 1, "out", 600, 400)]
        found = trace(postings, [Inflow(VICTIM, T0, 1_000, 400)])
        assert [part for _, part in found.outflows] == []  # 600 own money covers it
        assert found.held == 400

    def test_a_merge_counts_both_inflows(self) -> None:
        other = "6228480000000000011"
        postings = [
            p(0, 0, "in", 1_000, 1_000, VICTIM),
            p(1, 2, "in", 500, 1_500, other),
            p(2, 3, "out", 1_400, 100, MULE),
        ]
        inflows = [
            Inflow(VICTIM, T0, 1_000, 1_000),
            Inflow(other, T0 + timedelta(minutes=2), 500, 500),
        ]
        found = trace(postings, inflows)
        assert [part for _, part in found.outflows] == [1_400]
        assert found.held == 100

    def test_a_transfer_the_bank_does_not_record_is_reported(self) -> None:
        postings = [p(0, 0, "in", 1_000, 1_000, VICTIM)]
        found = trace(postings, [Inflow(VICTIM, T0 + timedelta(minutes=9), 1_000, 1_000)])
        assert found.unmatched == (0,)
        assert found.held == 0

    def test_the_closest_matching_credit_is_taken(self) -> None:
        postings = [
            p(0, -4, "in", 1_000, 1_000, VICTIM),
            p(1, 0, "in", 1_000, 2_000, VICTIM),
        ]
        found = trace(postings, [Inflow(VICTIM, T0, 1_000, 1_000)])
        assert found.inflows == {1: 0}
