"""The bank node: every bank action of the protocol answered from a ``CoreBanking`` backend.

``BankAgency`` maps each action to one backend call and the answer to its protobuf result;
``BankNode`` is the agency node runtime with it, plus live monitoring: a background task that
pushes monitored accounts' new transactions to the police who asked (``adapters.bank.monitor``).

    node = BankNode.open(load_config(path))
    async with node:
        await node.wait_for_termination()
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import timestamp_pb2

from adapters import telemetry
from adapters.bank import convert
from adapters.bank.backend import (
    CoreBanking,
    FreezeMethod,
    FreezeOrder,
    RefundOrder,
    StopPaymentOrder,
)
from adapters.bank.monitor import MONITOR_FILE, MonitorLedger, MonitorPusher
from adapters.config import NodeConfig
from adapters.node import AgencyNode, CoreNode, utc_now
from fedgate.actions import BANK_ACTIONS
from fedgate.disclosure import hit_response, is_hits
from fedgate.errors import FieldViolation, InvalidArgument, NotFound
from fedgate.registry import Registry
from fedgate.tls import MemberCredentials
from fedgate.v1 import bank_pb2, common_pb2, request_pb2

__all__ = ["BankAgency", "BankNode"]

OK = request_pb2.RESPONSE_STATUS_OK
_DEFAULT_PAGE = 100
_FREEZE_METHOD = {
    bank_pb2.FREEZE_METHOD_FIXED_AMOUNT: FreezeMethod.FIXED_AMOUNT,
    bank_pb2.FREEZE_METHOD_RECEIVE_ONLY: FreezeMethod.RECEIVE_ONLY,
}


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument.for_fields([FieldViolation(field, description)])


def _time(parent: Any, name: str, path: str) -> datetime:
    if not parent.HasField(name):
        raise _invalid(path, "is required")
    stamp: timestamp_pb2.Timestamp = getattr(parent, name)
    return stamp.ToDatetime(tzinfo=UTC)


def _window(window: Any, path: str) -> tuple[datetime, datetime]:
    """A required time window's start and end; ``path`` names the window in errors."""
    return _time(window, "start", f"{path}.start"), _time(window, "end", f"{path}.end")


def _cited(request: request_pb2.Request) -> str:
    if not request.original_request_id:
        raise _invalid("original_request_id", "must cite the original order's request id")
    return request.original_request_id


class BankAgency:
    """Answers bank actions from ``core``; blocking, thread-safe as the backend is."""

    def __init__(self, core: CoreBanking, *, ledger: MonitorLedger) -> None:
        self.core = core
        self._ledger = ledger
        self._handlers: dict[str, Callable[[request_pb2.Request, datetime], request_pb2.Response]]
        self._handlers = {
            "account_holder": self._account_holder,
            "transactions": self._transactions,
            "accounts_by_id": self._accounts_by_id,
            "login_records": self._login_records,
            "stop_payment": self._stop_payment,
            "stop_payment_release": self._stop_payment_release,
            "stop_payment_extend": self._stop_payment_extend,
            "freeze": self._freeze,
            "freeze_release": self._freeze_release,
            "freeze_renew": self._freeze_renew,
            "refund": self._refund,
            "monitor_start": self._monitor_start,
            "monitor_stop": self._monitor_stop,
            "aggregate_stats": self._aggregate_stats,
        }
        assert set(self._handlers) <= BANK_ACTIONS

    @property
    def actions(self) -> frozenset[str]:
        """Every bank action."""
        return frozenset(self._handlers)

    def answer(self, request: request_pb2.Request, *, now: datetime) -> request_pb2.Response:
        action = request.WhichOneof("action")
        if is_hits(request):
            return self._hits(request, action)
        handler = self._handlers.get(action or "")
        if handler is None:
            raise _invalid("action", f"{self.core.bank_id} does not serve {action}")
        return handler(request, now)

    def _hits(self, request: request_pb2.Request, action: str | None) -> request_pb2.Response:
        """Stage 1 of a staged disclosure: whether any account is held under the ID, nothing
        more (``fedgate.disclosure``)."""
        if action != "accounts_by_id":
            raise _invalid("disclosure.stage", f"{self.core.bank_id} answers stage 1 of "
                           "accounts_by_id only")  # fmt: skip
        try:
            return hit_response(bool(self.core.accounts_by_id(request.accounts_by_id.id_number)))
        except NotFound:
            return hit_response(False)

    # ------------------------------------------------------------------ queries

    def _account_holder(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        holder = self.core.account_holder(request.account_holder.account_number)
        return request_pb2.Response(status=OK, account_holder=convert.holder_pb(holder))

    def _transactions(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.transactions
        page = self.core.transactions(
            q.account_number,
            *_window(q.window, "transactions.window"),
            page_size=q.page.page_size or _DEFAULT_PAGE,
            page_token=q.page.page_token,
        )
        return request_pb2.Response(
            status=OK,
            transactions=bank_pb2.TransactionsResult(
                account_number=q.account_number,
                transactions=[convert.transaction_pb(t) for t in page.transactions],
                next_page_token=page.next_page_token,
            ),
        )

    def _accounts_by_id(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        id_number = request.accounts_by_id.id_number
        summaries = self.core.accounts_by_id(id_number)
        accounts = []
        for s in summaries:
            holder = self.core.account_holder(s.account_number)
            status = convert.account_status(s.status, stopped=holder.stopped, frozen=holder.frozen)
            accounts.append(convert.summary_pb(s, status=status))
        return request_pb2.Response(
            status=OK,
            accounts_by_id=bank_pb2.AccountsByIdResult(
                id_number=id_number, holder_name=summaries[0].name, accounts=accounts
            ),
        )

    def _login_records(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.login_records
        records = self.core.login_records(
            q.account_number,
            *_window(q.window, "login_records.window"),
        )
        return request_pb2.Response(
            status=OK,
            login_records=bank_pb2.LoginRecordsResult(
                account_number=q.account_number, records=[convert.login_pb(r) for r in records]
            ),
        )

    # ------------------------------------------------------------------ stop-payment

    def _stop_payment(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.stop_payment
        if not q.HasField("amount"):
            raise _invalid("stop_payment.amount", "is required")
        outcome = self.core.stop_payment(
            StopPaymentOrder(
                order_ref=request.request_id,
                account_number=q.account_number,
                account_name=q.account_name,
                payer_account=q.payer_account,
                payer_name=q.payer_name,
                payer_bank=q.payer_bank,
                amount_minor=q.amount.minor_units,
                currency=q.amount.currency,
                transfer_time=_time(q, "transfer_time", "stop_payment.transfer_time"),
                agency=request.requesting_agency,
                case_number=request.case.case_number,
                case_document=request.legal_document.number,
            ),
            now=now,
        )
        return request_pb2.Response(status=OK, stop_payment=convert.stop_pb(outcome))

    def _stop_payment_release(
        self, request: request_pb2.Request, now: datetime
    ) -> request_pb2.Response:
        outcome = self.core.stop_payment_release(
            request.stop_payment_release.account_number, _cited(request), now=now
        )
        return request_pb2.Response(status=OK, stop_payment=convert.stop_pb(outcome))

    def _stop_payment_extend(
        self, request: request_pb2.Request, now: datetime
    ) -> request_pb2.Response:
        outcome = self.core.stop_payment_extend(
            request.stop_payment_extend.account_number, _cited(request), now=now
        )
        return request_pb2.Response(status=OK, stop_payment=convert.stop_pb(outcome))

    # ------------------------------------------------------------------ freeze

    def _freeze(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.freeze
        method = _FREEZE_METHOD.get(q.method)
        if method is None:
            raise _invalid("freeze.method", "choose FIXED_AMOUNT or RECEIVE_ONLY")
        fixed = method is FreezeMethod.FIXED_AMOUNT
        if fixed and not q.HasField("amount"):
            raise _invalid("freeze.amount", "is required for a fixed-amount freeze")
        outcome = self.core.freeze(
            FreezeOrder(
                order_ref=request.request_id,
                account_number=q.account_number,
                account_name=q.account_name,
                method=method,
                amount_minor=q.amount.minor_units if fixed else 0,
                currency=q.amount.currency or "CNY",
                end=_time(q, "end", "freeze.end"),
                agency=request.requesting_agency,
                case_number=request.case.case_number,
                case_document=request.legal_document.number,
                duty_phone=q.duty_phone,
            ),
            now=now,
        )
        return request_pb2.Response(status=OK, freeze=convert.freeze_pb(outcome))

    def _freeze_release(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        outcome = self.core.freeze_release(
            request.freeze_release.account_number, _cited(request), now=now
        )
        return request_pb2.Response(status=OK, freeze=convert.freeze_pb(outcome))

    def _freeze_renew(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.freeze_renew
        outcome = self.core.freeze_renew(
            q.account_number, _cited(request), _time(q, "end", "freeze_renew.end"), now=now
        )
        return request_pb2.Response(status=OK, freeze=convert.freeze_pb(outcome))

    def _refund(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.refund
        if not q.HasField("amount"):
            raise _invalid("refund.amount", "is required")
        if not q.HasField("reported_loss"):
            raise _invalid("refund.reported_loss", "is required")
        if q.reported_loss.currency != q.amount.currency:
            raise _invalid("refund.reported_loss.currency", "must be the currency of the amount")
        outcome = self.core.refund(
            RefundOrder(
                order_ref=request.request_id,
                freeze_ref=_cited(request),
                account_number=q.account_number,
                victim_account=q.victim_account,
                victim_name=q.victim_name,
                victim_bank=q.victim_bank,
                amount_minor=q.amount.minor_units,
                reported_loss_minor=q.reported_loss.minor_units,
                currency=q.amount.currency,
                case_number=request.case.case_number,
                agency=request.requesting_agency,
            ),
            now=now,
        )
        return request_pb2.Response(status=OK, refund=convert.refund_pb(outcome))

    # ------------------------------------------------------------------ monitoring

    def _monitor_start(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.monitor_start
        state = self.core.monitor_start(
            q.account_number, _time(q, "until", "monitor_start.until"), now=now
        )
        self._ledger.start(
            account_number=q.account_number,
            police=request.requesting_agency,
            monitor_request_id=request.request_id,
            case=request.case,
            until=state.until,
            start_after_id=state.start_after_id,
        )
        return request_pb2.Response(status=OK, monitor=convert.monitor_pb(state))

    def _aggregate_stats(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        q = request.aggregate_stats
        stats = self.core.aggregate_stats(
            q.metric,
            *_window(q.window, "aggregate_stats.window"),
        )
        return request_pb2.Response(
            status=OK,
            aggregate_stats=bank_pb2.AggregateStatsResult(
                metric=stats.metric,
                count=stats.count,
                total=common_pb2.Money(currency=stats.currency, minor_units=stats.total_minor),
            ),
        )

    def _monitor_stop(self, request: request_pb2.Request, now: datetime) -> request_pb2.Response:
        account = request.monitor_stop.account_number
        state = self.core.monitor_stop(account, now=now)
        self._ledger.stop(account)
        return request_pb2.Response(status=OK, monitor=convert.monitor_pb(state))


class BankNode(CoreNode[CoreBanking]):
    """The agency node of a bank: ``BankAgency`` answers, plus the monitoring push task."""

    def __init__(
        self,
        *,
        config: NodeConfig,
        registry: Registry,
        credentials: MemberCredentials,
        core: CoreBanking,
        clock: Callable[[], datetime] = utc_now,
        owns_core: bool = False,
        **kwargs: Any,
    ) -> None:
        self.ledger = MonitorLedger(Path(config.state_dir) / MONITOR_FILE)
        self.agency = BankAgency(core, ledger=self.ledger)
        super().__init__(
            core=core,
            owns_core=owns_core,
            config=config,
            registry=registry,
            credentials=credentials,
            backend=self.agency,
            clock=clock,
            background=(_monitor_loop, *kwargs.pop("background", ())),
            **kwargs,
        )
        self.pusher = MonitorPusher(
            core=core, ledger=self.ledger, sender=self.report_sender, clock=clock
        )

    @classmethod
    def reference_backend(
        cls, path: Path, *, config: NodeConfig, clock: Callable[[], datetime]
    ) -> CoreBanking:
        from adapters.bank.reference import ReferenceBank

        return ReferenceBank(path=path, bank_id=config.member_id, clock=clock)

    async def push_monitored(self) -> int:
        """One delivery round of monitored transactions; how many were delivered."""
        return await self.pusher.push_once()

    async def stop(self, grace: float | None = 1.0) -> None:
        await super().stop(grace)
        self.ledger.close()


async def _monitor_loop(node: AgencyNode) -> None:
    assert isinstance(node, BankNode)
    while True:
        try:
            await node.push_monitored()
        except Exception as exc:  # a background loop must outlive any one failure
            telemetry.log_event("monitor push round failed", logging.ERROR, error=str(exc))
        await asyncio.sleep(node.config.monitor_poll_s)
