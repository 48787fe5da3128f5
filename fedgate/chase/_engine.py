"""The chase engine: follow the victim's money hop by hop across banks and stop it.

From the victim's transfer, the engine asks the receiving account's bank for the account's
transactions since then (``transactions``), applies the tracing rule (``_trace``), orders an
emergency stop-payment (``stop_payment``) when traced money is still there, and follows every
debit that carries traced money: to an account at a member bank (found by the BIN in the signed
registry) the chase goes on, in parallel with the other branches; cash, merchants and banks
outside the federation are dead ends, reported with the amount that left there.

Every request is an ordinary signed exchange through the gateway under one officer and one
case, with the workflow link: ``chase_id`` and ``parent_request_id`` (the transactions query
whose answer led to it), so the audit log holds the chase as a tree.

Contract:

- The engine MUST NOT order a stop-payment on an account that holds no traced money.
- A stop-payment refused because the account was already stopped twice MUST be reported
  (``Outcome.LIMIT``) and MUST NOT be retried.
- A member that is unavailable MUST be retried until the chase's deadline, then reported
  (``Outcome.UNREACHABLE``); the other branches go on.
- An account reached twice (branches that merge) is stopped at most once; the traced money of
  both inflows is counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from fedgate.actions import new_request_id
from fedgate.chase._model import (
    Authority,
    ChaseNode,
    ChaseReport,
    NodeKind,
    Outcome,
    VictimTransfer,
)
from fedgate.chase._trace import Inflow, Posting, trace
from fedgate.client import Answer, FedgateClient
from fedgate.errors import AgencyUnavailable, FedgateError, RuleViolated
from fedgate.logs import mask
from fedgate.v1 import bank_pb2, common_pb2, request_pb2

__all__ = ["CHASE_ACTIONS", "ChaseEngine"]

CHASE_ACTIONS = frozenset({"transactions", "stop_payment"})
"""The actions a chase sends (agency nodes answer these by machine when a chase sends them)."""

_CASH_CHANNELS = frozenset({"atm", "counter"})
_STOP_LIMIT_RULE = "stop_payment.max_two_per_account"
_PAGE_SIZE = 500
_MAX_PAGES = 20
_PURPOSE_QUERY = "紧急止付资金查控：查询涉案账户资金去向"
_PURPOSE_STOP = "受害人报案，资金正在转移，紧急止付"

OnEvent = Callable[[ChaseNode], None]


@dataclass(slots=True)
class _Account:
    """The engine's state for one account at a member bank."""

    node: ChaseNode
    inflows: list[Inflow] = field(default_factory=list)
    postings: tuple[Posting, ...] | None = None
    window_start: datetime | None = None
    sent: dict[int, int] = field(default_factory=dict)
    """Posting index → traced money already followed along that debit."""
    stop_tried: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ChaseEngine:
    """Runs one chase under one ``Authority`` with one police ``FedgateClient``."""

    def __init__(
        self,
        *,
        client: FedgateClient,
        authority: Authority,
        deadline_s: float = 60.0,
        retry_s: float = 0.25,
        on_event: OnEvent | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        self._client = client
        self._authority = authority
        self._deadline_s = deadline_s
        self._retry_s = retry_s
        self._on_event = on_event or (lambda _node: None)
        self._now = now
        self._accounts: dict[str, _Account] = {}
        self._leaves: dict[tuple[str, datetime, int, str], ChaseNode] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._report: ChaseReport | None = None
        self._transfer: VictimTransfer | None = None
        self._ends_at = 0.0

    async def run(self, transfer: VictimTransfer, *, chase_id: str | None = None) -> ChaseReport:
        """Chase ``transfer`` to its end (or the deadline); returns the report."""
        started = time.perf_counter()
        self._ends_at = time.monotonic() + self._deadline_s
        report = ChaseReport(
            chase_id=chase_id or new_request_id(),
            currency=transfer.currency,
            traced_minor=transfer.amount_minor,
        )
        self._report = report
        self._transfer = transfer
        inflow = Inflow(
            payer=transfer.payer_account,
            time=transfer.time,
            amount=transfer.amount_minor,
            traced=transfer.amount_minor,
        )
        self._follow(
            parent=None,
            parent_request_id="",
            account=transfer.payee_account,
            name=transfer.payee_name,
            inflow=inflow,
            at=transfer.time,
            channel="",
            bank_name="",
        )
        while self._tasks:
            await asyncio.gather(*list(self._tasks))
        report.seconds = time.perf_counter() - started
        return report

    # -- the tree ---------------------------------------------------------------------------

    def _add(
        self,
        kind: NodeKind,
        *,
        parent: ChaseNode | None,
        bank: str,
        account: str,
        name: str,
        traced_in: int,
        at: datetime,
    ) -> ChaseNode:
        report = self._report
        assert report is not None
        node = ChaseNode(
            node_id=len(report.nodes) + 1,
            parent_id=parent.node_id if parent is not None else None,
            kind=kind,
            bank=bank,
            account=account,
            name=name,
            traced_in=traced_in,
            time=at,
        )
        report.nodes.append(node)
        return node

    def _emit(self, node: ChaseNode) -> None:
        self._on_event(node)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _follow(
        self,
        *,
        parent: ChaseNode | None,
        parent_request_id: str,
        account: str,
        name: str,
        inflow: Inflow,
        at: datetime,
        channel: str,
        bank_name: str,
    ) -> None:
        """Follow ``inflow`` of traced money to ``account``: a dead end, or a visit."""

        def leaf(kind: NodeKind, bank: str) -> ChaseNode:
            # One leaf per debit: more traced money found along it later adds to the same leaf.
            key = (inflow.payer, inflow.time, inflow.amount, account)
            found = self._leaves.get(key)
            if found is not None:
                found.traced_in += inflow.traced
                return found
            node = self._leaves[key] = self._add(
                kind, parent=parent, bank=bank, account=account, name=name,
                traced_in=inflow.traced, at=at,
            )  # fmt: skip
            return node

        if channel in _CASH_CHANNELS or not account:
            node = leaf(NodeKind.CASH, "")
            node.outcome, node.detail = Outcome.CASH_OUT, f"withdrawn ({channel or 'cash'})"
            self._emit(node)
            return
        if not (account.isascii() and account.isdigit() and 16 <= len(account) <= 19):
            node = leaf(NodeKind.MERCHANT, bank_name)
            node.outcome, node.detail = Outcome.MERCHANT, f"paid to {name or 'a merchant'}"
            self._emit(node)
            return
        bank = self._client.registry.bank_of_account(account)
        if bank is None:
            node = leaf(NodeKind.OUTSIDE, bank_name)
            node.outcome = Outcome.LEFT
            node.detail = f"to {bank_name or 'a bank'} outside the federation"
            self._emit(node)
            return
        state = self._accounts.get(account)
        if state is None:
            node = self._add(
                NodeKind.ACCOUNT, parent=parent, bank=bank.id, account=account, name=name,
                traced_in=0, at=at,
            )  # fmt: skip
            node.parent_request_id = parent_request_id
            state = self._accounts[account] = _Account(node=node)
        self._spawn(self._visit(state, inflow))

    # -- one account -------------------------------------------------------------------------

    async def _visit(self, state: _Account, inflow: Inflow) -> None:
        node = state.node
        async with state.lock:
            # More traced money along a transfer already known (a merge upstream found more):
            # the same inflow, with the sum traced.
            for n, known in enumerate(state.inflows):
                if (known.payer, known.time, known.amount) == (
                    inflow.payer, inflow.time, inflow.amount,
                ):  # fmt: skip
                    state.inflows[n] = replace(known, traced=known.traced + inflow.traced)
                    break
            else:
                state.inflows.append(inflow)
            node.traced_in += inflow.traced
            if state.postings is None or (state.window_start and inflow.time < state.window_start):
                postings = await self._transactions(state, inflow.time)
                if postings is None:
                    self._emit(node)
                    return
                state.postings = postings
            found = trace(state.postings, state.inflows)
            node.held = found.held
            if found.held > 0 and not state.stop_tried:
                state.stop_tried = True
                await self._stop(state, found.inflows)
            elif found.held <= 0 and node.outcome == Outcome.PENDING:
                node.outcome = Outcome.PASSED_ON
                node.detail = "passed every traced yuan on: not stopped"
            if found.unmatched and not node.detail:
                node.detail = "a reported transfer was not found in the bank's records"
            self._emit(node)
            follow: list[tuple[Posting, int]] = []
            for posting, part in found.outflows:
                already = state.sent.get(posting.index, 0)
                if part > already:
                    state.sent[posting.index] = part
                    follow.append((posting, part - already))
        for posting, part in follow:
            self._follow(
                parent=node,
                parent_request_id=node.query_request_id,
                account=posting.counterparty,
                name=posting.counterparty_name,
                inflow=Inflow(
                    payer=node.account, time=posting.time, amount=posting.amount, traced=part
                ),
                at=posting.time,
                channel=posting.channel,
                bank_name=posting.counterparty_bank,
            )

    def _remaining(self) -> float:
        return self._ends_at - time.monotonic()

    def _request(
        self, *, target: str, action: object, kind: str, parent: str
    ) -> request_pb2.Request:
        a = self._authority
        report = self._report
        assert report is not None
        return self._client.new_request(
            action=action,  # type: ignore[arg-type]
            officer=a.officer,
            target=target,
            case=a.case,
            legal_document=a.stop_document if kind == "stop_payment" else a.query_document,
            purpose=_PURPOSE_STOP if kind == "stop_payment" else _PURPOSE_QUERY,
            urgency=common_pb2.URGENCY_EMERGENCY,
            deadline=timedelta(minutes=30),
            chase_id=report.chase_id,
            parent_request_id=parent,
            action_name=kind,
        )

    async def _ask(
        self, state: _Account, make: Callable[[], request_pb2.Request]
    ) -> tuple[request_pb2.Request, Answer | FedgateError]:
        """Submit a fresh request from ``make`` until it is answered or refused; retries an
        unavailable member until the deadline (each try is a new signed request)."""
        while True:
            request = make()
            remaining = self._remaining()
            try:
                answer = await self._client.ask(request, timeout=max(0.5, min(10.0, remaining)))
                return request, answer
            except AgencyUnavailable as error:
                if self._remaining() <= self._retry_s:
                    return request, error
                state.node.detail = f"{state.node.bank} unavailable, retrying"
                self._emit(state.node)
                await asyncio.sleep(self._retry_s)
            except FedgateError as error:
                return request, error

    async def _transactions(self, state: _Account, since: datetime) -> tuple[Posting, ...] | None:
        node = state.node
        start = since - timedelta(minutes=1)
        postings: list[Posting] = []
        token = ""
        for _ in range(_MAX_PAGES):
            end = self._now() + timedelta(minutes=1)
            query = bank_pb2.TransactionsQuery(
                account_number=node.account,
                page=common_pb2.PageRequest(page_size=_PAGE_SIZE, page_token=token),
            )
            query.window.start.FromDatetime(start)
            query.window.end.FromDatetime(end)
            request, outcome = await self._ask(state, self._query_maker(node, query))
            if not node.query_request_id:
                node.query_request_id = request.request_id
            if isinstance(outcome, FedgateError):
                node.outcome = (
                    Outcome.UNREACHABLE
                    if isinstance(outcome, AgencyUnavailable)
                    else Outcome.REFUSED
                )
                node.detail = f"transactions query failed: {outcome.reason}: {outcome.message}"
                return None
            if node.query_leaf_index is None:
                node.query_leaf_index = outcome.receipt.leaf_index
            response = outcome.response
            if response.status != request_pb2.RESPONSE_STATUS_OK:
                node.outcome = Outcome.REFUSED
                node.detail = f"transactions: {request_pb2.ResponseStatus.Name(response.status)}"
                node.detail += f" {response.detail}"
                return None
            result = response.transactions
            for tx in result.transactions:
                postings.append(
                    Posting(
                        index=len(postings),
                        time=tx.time.ToDatetime(tzinfo=UTC),
                        direction=tx.direction,
                        amount=tx.amount.minor_units,
                        balance_after=tx.balance_after.minor_units,
                        counterparty=tx.counterparty_account,
                        counterparty_name=tx.counterparty_name,
                        counterparty_bank=tx.counterparty_bank,
                        channel=tx.channel,
                        memo=tx.memo,
                    )
                )
            token = result.next_page_token
            if not token:
                break
        state.window_start = start
        return tuple(postings)

    def _query_maker(
        self, node: ChaseNode, query: bank_pb2.TransactionsQuery
    ) -> Callable[[], request_pb2.Request]:
        return lambda: self._request(
            target=node.bank, action=query, kind="transactions", parent=node.parent_request_id
        )

    async def _stop(self, state: _Account, inflows: dict[int, int]) -> None:
        node = state.node
        assert state.postings is not None
        # Cite the traced transfer that brought the most money: the bank matches the order to it.
        posting_index = max(inflows, key=lambda i: state.inflows[inflows[i]].traced)
        credit = state.postings[posting_index]
        payer_bank = self._client.registry.bank_of_account(credit.counterparty)
        victim = self._transfer
        if victim is not None and credit.counterparty == victim.payer_account:
            cited_bank = victim.payer_bank  # the victim's own transfer: as the victim reported it
        else:
            cited_bank = payer_bank.id if payer_bank is not None else credit.counterparty_bank
        report = self._report
        assert report is not None
        order = bank_pb2.StopPaymentOrder(
            account_number=node.account,
            account_name=node.name,
            payer_account=credit.counterparty,
            payer_name=credit.counterparty_name,
            payer_bank=cited_bank,
            amount=common_pb2.Money(currency=report.currency, minor_units=credit.amount),
            victim_application=self._authority.victim_application,
        )
        order.transfer_time.FromDatetime(credit.time)
        request, outcome = await self._ask(
            state,
            lambda: self._request(
                target=node.bank, action=order, kind="stop_payment", parent=node.query_request_id
            ),
        )
        node.stop_request_id = request.request_id
        if isinstance(outcome, FedgateError):
            if isinstance(outcome, RuleViolated) and _STOP_LIMIT_RULE in outcome.message:
                node.outcome, node.detail = Outcome.LIMIT, outcome.message
            elif isinstance(outcome, AgencyUnavailable):
                node.outcome = Outcome.UNREACHABLE
                node.detail = f"stop-payment not delivered by the deadline: {outcome.message}"
            else:
                node.outcome = Outcome.REFUSED
                node.detail = f"{outcome.reason}: {outcome.message}"
            return
        node.stop_leaf_index = outcome.receipt.leaf_index
        response = outcome.response
        if response.status == request_pb2.RESPONSE_STATUS_OK and response.stop_payment.in_force:
            node.outcome = Outcome.STOPPED
            node.detail = f"stop-payment in force (count {response.stop_payment.stop_count})"
        else:
            node.outcome = Outcome.REFUSED
            node.detail = (
                f"{request_pb2.ResponseStatus.Name(response.status)}: {response.detail}"
                f" ({mask(node.account)})"
            )
