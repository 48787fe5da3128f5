"""The tracing rule: which outflows of an account carry the victim's money, and how much stays.

The rule is the *lowest intermediate balance* rule with the holder's own money spent first (the
"Re Hallett" presumption courts use for mixed accounts; see ``docs/chase.md`` for why):

- the account's own money is its balance just before the first traced transfer arrived;
  every later credit that is not traced adds to its own money;
- a traced credit adds its traced part to the traced money (the rest of it to own money);
- every debit takes the holder's own money first and then traced money, so a debit carries
  traced money only for the part its own money cannot cover; traced money never exceeds what
  the balance allows, and money that left is never counted back.

``trace`` is a pure function over one account's transactions, so the rule is tested by itself;
the chase engine applies it account by account as the transactions arrive from the banks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["MATCH_TOLERANCE", "Inflow", "Posting", "Traced", "match_inflow", "trace"]

MATCH_TOLERANCE = timedelta(minutes=5)
"""How far apart the payer's and the payee's bank may record one transfer's time (the same
tolerance the banks use to match a stop-payment to the victim's transfer)."""


@dataclass(frozen=True, slots=True)
class Posting:
    """One transaction of the account as its bank reported it (times aware, amounts in minor
    units)."""

    index: int
    time: datetime
    direction: str  # "in" or "out"
    amount: int
    balance_after: int
    counterparty: str
    counterparty_name: str
    counterparty_bank: str
    channel: str
    memo: str


@dataclass(frozen=True, slots=True)
class Inflow:
    """A traced transfer into the account: from ``payer`` at ``time``, ``amount`` moved, of
    which ``traced`` is the victim's money."""

    payer: str
    time: datetime
    amount: int
    traced: int


@dataclass(frozen=True, slots=True)
class Traced:
    """What the rule finds in one account: the postings that are the traced inflows (by the
    index of the inflow in the input), the debits carrying traced money with how much, and the
    traced money still held."""

    inflows: dict[int, int]
    """Posting index → the ``Inflow``'s position in the input."""
    outflows: tuple[tuple[Posting, int], ...]
    held: int
    unmatched: tuple[int, ...]
    """Inflows (positions) no posting matched: the bank's record disagrees with the payer's."""


def match_inflow(postings: Sequence[Posting], inflow: Inflow, taken: set[int]) -> int | None:
    """The index of the credit recording ``inflow`` (same payer and amount, closest in time
    within ``MATCH_TOLERANCE``), not one already ``taken``; ``None`` when there is none."""
    best: tuple[timedelta, int] | None = None
    for p in postings:
        if p.direction != "in" or p.index in taken:
            continue
        if p.counterparty != inflow.payer or p.amount != inflow.amount:
            continue
        gap = abs(p.time - inflow.time)
        if gap <= MATCH_TOLERANCE and (best is None or gap < best[0]):
            best = (gap, p.index)
    return None if best is None else best[1]


def trace(postings: Sequence[Posting], inflows: Sequence[Inflow]) -> Traced:
    """Apply the rule to ``postings`` (the account's transactions in the bank's order) given
    the traced ``inflows`` known so far. Inflows with nothing traced are ignored."""
    taken: set[int] = set()
    by_posting: dict[int, int] = {}
    unmatched: list[int] = []
    for position, inflow in enumerate(inflows):
        if inflow.traced <= 0:
            continue
        found = match_inflow(postings, inflow, taken)
        if found is None:
            unmatched.append(position)
            continue
        taken.add(found)
        by_posting[found] = position
    if not by_posting:
        return Traced({}, (), 0, tuple(unmatched))
    order = {p.index: n for n, p in enumerate(postings)}
    first = min(by_posting, key=lambda i: order[i])
    start = order[first]
    own = max(0, postings[start].balance_after - postings[start].amount)
    held = 0
    outflows: list[tuple[Posting, int]] = []
    for p in postings[start:]:
        if p.direction == "in":
            at = by_posting.get(p.index)
            part = min(p.amount, inflows[at].traced) if at is not None else 0
            held += part
            own += p.amount - part
            continue
        from_own = min(own, p.amount)
        from_traced = min(held, p.amount - from_own)
        own -= from_own
        held -= from_traced
        if from_traced > 0:
            outflows.append((p, from_traced))
    return Traced(by_posting, tuple(outflows), held, tuple(unmatched))
