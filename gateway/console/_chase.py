"""A chase as a tree, for the auditor console: every exchange of one chase linked by its
workflow link (``chase_id``, ``parent_request_id``), each with its request and response legs.

The entries are found through the searchable index (the chase's case number, newest first,
bounded), then each request leg is decoded to read its signed link: the tree is what the police
signed, not what anyone claims about it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedgate.audit_entry import EntryKind, RequestLeg, ResponseLeg, decode_entry
from fedgate.envelope import decode_request, decode_response
from fedgate.errors import FedgateError
from fedgate.logs import mask
from fedgate.v1 import common_pb2, envelope_pb2, request_pb2
from gateway.audit.insights import LogInsights
from gateway.audit.reader import LogView
from gateway.audit.store import SearchQuery

__all__ = ["MAX_CHASE_ENTRIES", "ChaseStep", "ChaseView", "chase_of", "load_chase"]

MAX_CHASE_ENTRIES = 2000
"""At most this many entries of the chase's case are read to draw it."""
_PAGE = 500


@dataclass(slots=True)
class ChaseStep:
    """One exchange of the chase: the request leg, its answer, what it was about."""

    index: int
    request_id: str
    parent_request_id: str
    action: str
    target: str
    account: str
    amount: str
    decision: str
    response_index: int | None = None
    status: str = ""
    result: str = ""
    """Free text (a refusal's rule, a response's detail), shown as is."""
    result_key: str = ""
    """A catalogued summary of the answer (``chase.result.*``) with ``result_args``."""
    result_args: dict[str, object] = field(default_factory=dict)
    children: list[ChaseStep] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ChaseView:
    """The chase's id, its case and its tree (roots: requests without a parent in the chase)."""

    chase_id: str
    case_number: str
    roots: tuple[ChaseStep, ...]
    steps: int
    truncated: bool


def _request(leg: RequestLeg) -> request_pb2.Request | None:
    try:
        return decode_request(envelope_pb2.SignedEnvelope.FromString(leg.envelope).body)
    except Exception:  # a refused, malformed request: not part of any chase
        return None


def _money(money: common_pb2.Money) -> str:
    yuan = money.minor_units / 100
    return f"¥{yuan:,.2f}" if money.currency == "CNY" else f"{yuan:,.2f} {money.currency}"


def _subject(request: request_pb2.Request) -> tuple[str, str]:
    """(masked account, amount) of a chase request."""
    action = request.WhichOneof("action")
    if action == "stop_payment":
        order = request.stop_payment
        return mask(order.account_number), _money(order.amount)
    if action == "transactions":
        return mask(request.transactions.account_number), ""
    return "", ""


def _result(leg: ResponseLeg) -> tuple[str, str, dict[str, object]]:
    """(free text, catalogue key, its arguments) summarising an answer."""
    if not leg.response_envelope:
        return leg.detail, "", {}
    try:
        body = envelope_pb2.SignedEnvelope.FromString(leg.response_envelope).body
        response = decode_response(body)
    except Exception:
        return leg.detail, "", {}
    kind = response.WhichOneof("result")
    if kind == "stop_payment":
        stop = response.stop_payment
        key = "chase.result.stopped" if stop.in_force else "chase.result.not_stopped"
        return "", key, {"balance": _money(stop.balance), "count": stop.stop_count}
    if kind == "transactions":
        txs = response.transactions.transactions
        out = sum(t.amount.minor_units for t in txs if t.direction == "out")
        moved = _money(common_pb2.Money(currency="CNY", minor_units=out))
        return "", "chase.result.transactions", {"count": len(txs), "out": moved}
    return response.detail, "", {}


async def chase_of(log: LogView, index: int) -> tuple[str, str] | None:
    """(chase id, case number) of the exchange at ``index`` (either leg), or ``None``."""
    try:
        entry = decode_entry(await log.open_entry(index))
        if isinstance(entry, ResponseLeg) and entry.request_origin:
            return None  # its request leg, which would say, is in another shard
        if isinstance(entry, ResponseLeg):
            entry = decode_entry(await log.open_entry(entry.request_leaf_index))
    except (FedgateError, IndexError):
        return None
    if not isinstance(entry, RequestLeg):
        return None
    request = _request(entry)
    if request is None or not request.chase_id:
        return None
    return request.chase_id, request.case.case_number


async def load_chase(log: LogView, insights: LogInsights, index: int) -> ChaseView | None:
    """The chase the exchange at ``index`` belongs to, or ``None`` when it belongs to none."""
    found = await chase_of(log, index)
    if found is None:
        return None
    chase_id, case = found
    steps: dict[str, ChaseStep] = {}
    answers: list[tuple[int, ResponseLeg]] = []
    before: int | None = None
    read = 0
    truncated = False
    while True:
        hits = await insights.newest(
            SearchQuery(case_number=case, limit=_PAGE), before_index=before
        )
        for hit in hits:
            read += 1
            leg = hit.columns[0]
            if leg not in (EntryKind.REQUEST, EntryKind.RESPONSE):
                continue
            entry = decode_entry(await log.open_entry(hit.index))
            if isinstance(entry, RequestLeg):
                request = _request(entry)
                if request is None or request.chase_id != chase_id:
                    continue
                account, amount = _subject(request)
                steps[request.request_id] = ChaseStep(
                    index=hit.index,
                    request_id=request.request_id,
                    parent_request_id=request.parent_request_id,
                    action=request.WhichOneof("action") or "",
                    target=request.target_agency,
                    account=account,
                    amount=amount,
                    decision=entry.decision,
                    result=entry.rule if entry.decision != "allowed" else "",
                )
            elif isinstance(entry, ResponseLeg):
                answers.append((hit.index, entry))
        if len(hits) < _PAGE:
            break
        if read >= MAX_CHASE_ENTRIES:
            truncated = True
            break
        before = hits[-1].index
    for response_index, answer in answers:
        step = steps.get(answer.request_id)
        if step is not None and step.response_index is None:
            step.response_index = response_index
            step.status = answer.status
            step.result, step.result_key, step.result_args = _result(answer)
    roots: list[ChaseStep] = []
    for step in sorted(steps.values(), key=lambda s: s.index):
        parent = steps.get(step.parent_request_id)
        if parent is None:
            roots.append(step)
        else:
            parent.children.append(step)
    return ChaseView(chase_id, case, tuple(roots), len(steps), truncated)
