"""Access policy decisions: who may do which action at which target.

The policy is data (``policies/model.conf`` and ``policies/policy.csv``): Casbin RBAC with
domains, deny by default, explicit ``deny`` lines that win. Three deciders share one seam:

- ``CasbinDecider`` asks pycasbin itself (the reference);
- ``IndexedDecider`` compiles the policy pycasbin loaded (``build_enforcer``) into a dict index,
  O(1) per decision, and MUST give the same ``allowed`` and ``rule`` as ``CasbinDecider`` for
  every request;
- ``ReloadingDecider`` wraps either and reloads when the files change. It MUST keep the last good
  policy when a reload fails, and MUST deny everything while no policy has ever loaded.

Every decider MUST deny a request whose member or target is not in its member registry, or whose
stated kind differs from the registry's. Configuration errors raise ``PolicyConfigError`` (a
``RegistryError``); ``authorize`` raises ``PolicyDenied`` for a denial.
"""

from __future__ import annotations

import csv
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol

from fedgate import actions
from fedgate.disclosure import WIDE_ACTIONS
from fedgate.errors import PolicyDenied
from fedgate.federation import DEFAULT_MEMBERS, MemberKind
from fedgate.types import MemberId
from fedgate.v1 import common_pb2
from gateway.policy._index import (
    PolicyConfigError,
    PolicyIndex,
    PolicySource,
    build_enforcer,
    load_policy_source,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_MEMBER_KINDS",
    "MEMBER_KINDS",
    "PERSONAL_DATA_ACTIONS",
    "ROLES",
    "CasbinDecider",
    "Decision",
    "IndexedDecider",
    "PolicyConfigError",
    "PolicyDecider",
    "PolicyRequest",
    "ReloadingDecider",
    "TruthRow",
    "authorize",
    "default_policy_dir",
    "load_default_decider",
    "load_truth_table",
]

_log = logging.getLogger("gateway.policy")

MEMBER_KINDS: Final = frozenset(kind.value for kind in MemberKind)
ROLES: Final = frozenset(
    actions.role_name(value)
    for value in common_pb2.Role.values()
    if value != common_pb2.ROLE_UNSPECIFIED
)
"""The roles of ``fedgate.v1.Role``, in the policy vocabulary (``police_investigator`` ...)."""
PERSONAL_DATA_ACTIONS: Final = (
    actions.PERSONAL_DATA_ACTIONS | actions.ORDER_ACTIONS | WIDE_ACTIONS | {"ticket_read"}
)
"""Queries, orders and answers that touch a person's data."""
ACTIONS: Final = actions.ACTIONS | WIDE_ACTIONS | {"audit_read", "audit_read_own", "ticket_read"}
"""Every action a policy line may name: the request actions, direct wide queries
(``accounts_by_id:wide``, ``fedgate.disclosure``) and log and ticket reads."""

DEFAULT_MEMBER_KINDS: Final[Mapping[MemberId, str]] = MappingProxyType(
    {spec.id: spec.kind.value for spec in DEFAULT_MEMBERS}
)
"""The default federation's members and their kinds (tests, CLI, development setups)."""


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One question to the policy: may ``role`` at ``member`` do ``action`` at ``target``?"""

    role: str
    member: MemberId
    member_kind: str
    action: str
    target: MemberId
    target_kind: str

    @classmethod
    def of(
        cls,
        *,
        role: str,
        member: str,
        action: str,
        target: str,
        members: Mapping[MemberId, str] = DEFAULT_MEMBER_KINDS,
    ) -> PolicyRequest:
        """Fill in both kinds from ``members`` (an unknown member gets kind "", then is denied)."""
        return cls(
            role=role,
            member=MemberId(member),
            member_kind=members.get(MemberId(member), ""),
            action=action,
            target=MemberId(target),
            target_kind=members.get(MemberId(target), ""),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer, the matched policy line (for the audit entry) and a reason a person can read."""

    allowed: bool
    rule: tuple[str, ...] | None
    explanation: str


class PolicyDecider(Protocol):
    def decide(self, req: PolicyRequest) -> Decision: ...


def authorize(decider: PolicyDecider, req: PolicyRequest) -> Decision:
    """The decision if allowed; raises ``PolicyDenied`` with the explanation otherwise."""
    decision = decider.decide(req)
    if not decision.allowed:
        raise PolicyDenied(
            f"{req.role} at {req.member} may not {req.action} at {req.target}: "
            f"{decision.explanation}"
        )
    return decision


def default_policy_dir() -> Path:
    """The ``policies/`` folder shipped with fedgate."""
    import policies

    return Path(policies.__file__).resolve().parent


def _registry_problem(req: PolicyRequest, members: Mapping[MemberId, str]) -> str | None:
    # Fail closed: the kinds in the request must be the registry's, or kind rules could be dodged.
    if not req.role or not req.action:
        return "empty role or action"
    for what, member, kind in (
        ("requesting member", req.member, req.member_kind),
        ("target", req.target, req.target_kind),
    ):
        known = members.get(member)
        if known is None:
            return f"{what} {member!r} is not in the member registry"
        if known != kind:
            return f"{what} {member} is of kind {known!r}, not {kind!r}"
    return None


def _format_rule(rule: tuple[str, ...]) -> str:
    return ", ".join(rule)


def _decision(
    req: PolicyRequest, rule: tuple[str, ...] | None, why_not: Callable[[], str]
) -> Decision:
    if rule is None:
        return Decision(allowed=False, rule=None, explanation=why_not())
    via = f" ({req.role} inherits {rule[1]} at {req.member})" if rule[1] != req.role else ""
    if rule[-1] == "allow":
        text = f"allowed by {_format_rule(rule)}{via}"
        return Decision(allowed=True, rule=rule, explanation=text)
    text = f"a deny rule wins: {_format_rule(rule)}{via}"
    return Decision(allowed=False, rule=rule, explanation=text)


class CasbinDecider:
    """pycasbin's ``Enforcer.enforce_ex`` behind the typed seam; the reference decider.

    Denial explanations come from a ``PolicyIndex`` built on first need; the decision and rule
    always come from pycasbin.
    """

    def __init__(self, *, source: PolicySource, members: Mapping[MemberId, str]) -> None:
        self._members = dict(members)
        self._enforcer = build_enforcer(source, self._members)
        self._lock = threading.Lock()  # enforce_ex mutates the enforcer's function map
        self._index: PolicyIndex | None = None

    @classmethod
    def from_files(
        cls, model: Path, policy: Path, *, members: Mapping[MemberId, str] = DEFAULT_MEMBER_KINDS
    ) -> CasbinDecider:
        return cls(source=load_policy_source(model, policy), members=members)

    @property
    def enforcer(self) -> Any:
        """The underlying ``casbin.Enforcer`` (benchmarks compare against it)."""
        return self._enforcer

    def decide(self, req: PolicyRequest) -> Decision:
        problem = _registry_problem(req, self._members)
        if problem is not None:
            return Decision(allowed=False, rule=None, explanation=problem)
        try:
            with self._lock:
                allowed, rule = self._enforcer.enforce_ex(
                    req.role, req.member, req.action, req.target
                )
        except Exception as exc:  # pycasbin raises bare RuntimeError on a broken model
            raise PolicyConfigError(f"pycasbin failed to decide: {exc}") from exc
        matched = ("p", *rule) if rule else None
        decision = _decision(req, matched, lambda: self._explain(req))
        if decision.allowed != bool(allowed):
            raise PolicyConfigError(f"pycasbin answered {allowed} with rule {matched}")
        return decision

    def _explain(self, req: PolicyRequest) -> str:
        if self._index is None:
            self._index = PolicyIndex(self._enforcer, self._members)
        return self._index.explain_no_match(req.role, req.member, req.action, req.target)


_DECISION_CACHE_LIMIT = 65_536


class IndexedDecider:
    """The policy compiled to a dict index: same answers as ``CasbinDecider``, O(1) each.

    Supports the fedgate model shape only (the matcher in ``policies/model.conf``); raises
    ``PolicyConfigError`` for any other matcher.
    """

    def __init__(self, *, source: PolicySource, members: Mapping[MemberId, str]) -> None:
        if not source.matcher_is_canonical:
            raise PolicyConfigError(
                f"{source.model_path}: IndexedDecider supports only the fedgate matcher; "
                f"use CasbinDecider for {source.matcher!r}"
            )
        self._members = dict(members)
        # Derived from pycasbin's own reading of the files (the single source of truth).
        self._index = PolicyIndex(build_enforcer(source, self._members), self._members)
        # Sound because the index never changes: a new policy means a new decider.
        self._cache: dict[PolicyRequest, Decision] = {}

    @classmethod
    def from_files(
        cls, model: Path, policy: Path, *, members: Mapping[MemberId, str] = DEFAULT_MEMBER_KINDS
    ) -> IndexedDecider:
        return cls(source=load_policy_source(model, policy), members=members)

    def decide(self, req: PolicyRequest) -> Decision:
        decision = self._cache.get(req)
        if decision is None:
            decision = self._decide(req)
            if len(self._cache) >= _DECISION_CACHE_LIMIT:
                self._cache.clear()
            self._cache[req] = decision
        return decision

    def _decide(self, req: PolicyRequest) -> Decision:
        problem = _registry_problem(req, self._members)
        if problem is not None:
            return Decision(allowed=False, rule=None, explanation=problem)
        index = self._index
        line = index.match(req.role, req.member, req.action, req.target)
        return _decision(
            req,
            line.rule if line is not None else None,
            lambda: index.explain_no_match(req.role, req.member, req.action, req.target),
        )


DeciderFactory = Callable[..., PolicyDecider]
"""``factory(model, policy, *, members=...)``, e.g. ``IndexedDecider.from_files``."""

_Stamp = tuple[tuple[int, int, int], ...]


class ReloadingDecider:
    """A decider rebuilt from its files when they change (checked at most every interval).

    A failed load MUST keep the last good policy and log an error; until a load has succeeded,
    every request MUST be denied. ``reload()`` forces a load and returns whether it succeeded.
    """

    def __init__(
        self,
        *,
        model: Path,
        policy: Path,
        members: Mapping[MemberId, str] = DEFAULT_MEMBER_KINDS,
        factory: DeciderFactory = IndexedDecider.from_files,
        check_interval_ms: float = 1000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if check_interval_ms < 0:
            raise ValueError(f"check_interval_ms must be >= 0, got {check_interval_ms}")
        self._model = model
        self._policy = policy
        self._members: Mapping[MemberId, str] = dict(members)
        self._factory = factory
        self._interval = check_interval_ms / 1000.0
        self._clock = clock
        self._lock = threading.Lock()
        self._current: PolicyDecider | None = None
        self._stamp: _Stamp | None = None
        self._next_check = 0.0
        self.generation = 0
        """How many loads have succeeded."""
        self.last_error: str | None = None
        """Why the most recent load failed, or None after a success."""
        self.reload()

    @property
    def loaded(self) -> bool:
        return self._current is not None

    def decide(self, req: PolicyRequest) -> Decision:
        now = self._clock()
        if now >= self._next_check and self._lock.acquire(blocking=False):
            try:
                self._next_check = now + self._interval
                stamp = self._stamp_files()
                if stamp != self._stamp:
                    self._load(stamp)
            finally:
                self._lock.release()
        current = self._current
        if current is None:
            return Decision(
                allowed=False,
                rule=None,
                explanation=f"no policy loaded ({self.last_error or 'not loaded yet'})",
            )
        return current.decide(req)

    def reload(self) -> bool:
        """Load the files now; on failure keep the previous policy. Returns True on success."""
        with self._lock:
            self._next_check = self._clock() + self._interval
            return self._load(self._stamp_files())

    def set_members(self, members: Mapping[MemberId, str]) -> bool:
        """Rebuild with a new member registry (e.g. after a member joins)."""
        self._members = dict(members)
        return self.reload()

    def _stamp_files(self) -> _Stamp:
        stamps = []
        for path in (self._model, self._policy):
            try:
                st = os.stat(path)
            except OSError:
                stamps.append((-1, -1, -1))
            else:
                stamps.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(stamps)

    def _load(self, stamp: _Stamp) -> bool:
        # The stamp is taken before reading, so an edit during the read triggers another load.
        self._stamp = stamp
        try:
            decider = self._factory(self._model, self._policy, members=self._members)
        except PolicyConfigError as exc:
            self.last_error = exc.message
            if self._current is None:
                _log.error("policy load failed, denying every request: %s", exc.message)
            else:
                _log.error("policy reload failed, keeping the previous policy: %s", exc.message)
            return False
        self._current = decider
        self.generation += 1
        self.last_error = None
        _log.info("policy loaded from %s (generation %d)", self._policy, self.generation)
        return True


def load_default_decider(
    policy_dir: Path | None = None,
    *,
    members: Mapping[MemberId, str] = DEFAULT_MEMBER_KINDS,
    check_interval_ms: float = 1000.0,
    factory: DeciderFactory = IndexedDecider.from_files,
) -> ReloadingDecider:
    """A reloading ``IndexedDecider`` over ``policy_dir/model.conf`` and ``policy.csv``."""
    folder = policy_dir if policy_dir is not None else default_policy_dir()
    return ReloadingDecider(
        model=folder / "model.conf",
        policy=folder / "policy.csv",
        members=members,
        factory=factory,
        check_interval_ms=check_interval_ms,
    )


@dataclass(frozen=True, slots=True)
class TruthRow:
    """One truth-table row: ``role,member,action,target,allow|deny[,expected rule|none]``."""

    where: str
    role: str
    member: str
    action: str
    target: str
    allowed: bool
    rule: tuple[str, ...] | None
    """The rule the decision must report; None to skip the check; () for "no rule"."""

    def request(self, members: Mapping[MemberId, str] = DEFAULT_MEMBER_KINDS) -> PolicyRequest:
        return PolicyRequest.of(
            role=self.role,
            member=self.member,
            action=self.action,
            target=self.target,
            members=members,
        )

    def mismatch(self, decision: Decision) -> str | None:
        """What differs between the decision and this row, or None if it agrees."""
        if decision.allowed != self.allowed:
            got = "allow" if decision.allowed else "deny"
            return (
                f"expected {'allow' if self.allowed else 'deny'}, got {got}: {decision.explanation}"
            )
        if self.rule is not None and (decision.rule or ()) != self.rule:
            want = _format_rule(self.rule) if self.rule else "no rule"
            got = _format_rule(decision.rule) if decision.rule else "no rule"
            return f"expected rule {want}, got {got}"
        return None

    def __str__(self) -> str:
        verdict = "allow" if self.allowed else "deny"
        return (
            f"{self.where}: {self.role} at {self.member} {self.action} -> {self.target} {verdict}"
        )


def load_truth_table(path: Path) -> tuple[TruthRow, ...]:
    """Parse one truth table (CSV; ``#`` comments and a ``role,...`` header are skipped)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyConfigError(f"cannot read truth table {path}: {exc}") from exc
    rows: list[TruthRow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in next(csv.reader([line], skipinitialspace=True))]
        where = f"{path.name}:{number}"
        if fields[0] == "role":
            continue
        if len(fields) not in (5, 6) or fields[4] not in ("allow", "deny"):
            raise PolicyConfigError(
                f"{where}: expected role,member,action,target,allow|deny[,rule], got {line!r}"
            )
        rule: tuple[str, ...] | None = None
        if len(fields) == 6 and fields[5]:
            rule = () if fields[5] == "none" else tuple(f.strip() for f in fields[5].split(","))
        role, member, action, target, verdict = fields[:5]
        rows.append(TruthRow(where, role, member, action, target, verdict == "allow", rule))
    return tuple(rows)
