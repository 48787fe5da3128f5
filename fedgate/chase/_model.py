"""What a chase starts from, what it finds, and how it reports it (values, and their JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from fedgate.logs import mask
from fedgate.protojson import iso_time
from fedgate.v1 import common_pb2

__all__ = ["Authority", "ChaseNode", "ChaseReport", "NodeKind", "Outcome", "VictimTransfer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class VictimTransfer:
    """The victim's transfer, as the victim reports it (from their bank's receipt)."""

    payer_account: str
    payer_name: str
    payer_bank: str
    """The victim's bank: a member id, or the bank's name when it is not a member."""
    payee_account: str
    payee_name: str
    amount_minor: int
    currency: str = "CNY"
    time: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class Authority:
    """Under whom and what every request of the chase is made: one officer, one case."""

    officer: common_pb2.Person
    case: common_pb2.CaseInfo
    query_document: common_pb2.LegalDocument
    stop_document: common_pb2.LegalDocument
    victim_application: str
    """The reference of the victim's stop-payment application (受害人申请)."""


class NodeKind(StrEnum):
    """What a node of the chase tree is."""

    ACCOUNT = "account"  # an account at a member bank
    CASH = "cash"  # withdrawn in cash (ATM, counter)
    MERCHANT = "merchant"  # paid to a merchant or payment institution
    OUTSIDE = "outside"  # an account at a bank outside the federation


class Outcome(StrEnum):
    """How a node ended."""

    STOPPED = "stopped"
    LIMIT = "already stopped twice"
    REFUSED = "stop refused"
    PASSED_ON = "passed on"  # holds no traced money: not stopped
    UNREACHABLE = "unreachable"
    CASH_OUT = "cash-out"
    MERCHANT = "merchant"
    LEFT = "left the federation"
    PENDING = "pending"


@dataclass(slots=True)
class ChaseNode:
    """One node of the chase tree. Mutable while the chase runs; reported as ``to_json``."""

    node_id: int
    parent_id: int | None
    kind: NodeKind
    bank: str
    account: str
    name: str
    traced_in: int
    """Victim's money that reached this node (minor units)."""
    held: int = 0
    """Victim's money still there when the chase looked (accounts only)."""
    outcome: Outcome = Outcome.PENDING
    detail: str = ""
    time: datetime | None = None
    query_request_id: str = ""
    query_leaf_index: int | None = None
    stop_request_id: str = ""
    stop_leaf_index: int | None = None
    parent_request_id: str = ""

    def to_json(self, *, unmasked: bool = False) -> dict[str, Any]:
        return {
            "id": self.node_id,
            "parent": self.parent_id,
            "kind": self.kind.value,
            "bank": self.bank,
            "account": self.account if unmasked else mask(self.account),
            "traced_in_minor": self.traced_in,
            "held_minor": self.held,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "time": iso_time(self.time) if self.time else None,
            "query_request_id": self.query_request_id,
            "query_leaf_index": self.query_leaf_index,
            "stop_request_id": self.stop_request_id,
            "stop_leaf_index": self.stop_leaf_index,
        }


@dataclass(slots=True)
class ChaseReport:
    """The whole chase: its id, its tree and its figures."""

    chase_id: str
    currency: str
    traced_minor: int
    nodes: list[ChaseNode] = field(default_factory=list)
    seconds: float = 0.0

    def _sum(self, *outcomes: Outcome) -> int:
        return sum(n.held if n.kind == NodeKind.ACCOUNT else n.traced_in
                   for n in self.nodes if n.outcome in outcomes)  # fmt: skip

    @property
    def stopped(self) -> tuple[ChaseNode, ...]:
        return tuple(n for n in self.nodes if n.outcome == Outcome.STOPPED)

    @property
    def stopped_minor(self) -> int:
        return self._sum(Outcome.STOPPED)

    @property
    def lost_minor(self) -> int:
        """Cashed out, paid to merchants, or gone to banks outside the federation."""
        return self._sum(Outcome.CASH_OUT, Outcome.MERCHANT, Outcome.LEFT)

    @property
    def unresolved_minor(self) -> int:
        """Held in accounts that could not be stopped (limit, refusal, node down)."""
        return self._sum(Outcome.LIMIT, Outcome.REFUSED, Outcome.UNREACHABLE)

    def to_json(self, *, unmasked: bool = False) -> dict[str, Any]:
        return {
            "chase_id": self.chase_id,
            "currency": self.currency,
            "traced_minor": self.traced_minor,
            "stopped_minor": self.stopped_minor,
            "lost_minor": self.lost_minor,
            "unresolved_minor": self.unresolved_minor,
            "accounts_stopped": len(self.stopped),
            "seconds": round(self.seconds, 3),
            "nodes": [n.to_json(unmasked=unmasked) for n in self.nodes],
        }
