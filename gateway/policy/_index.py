"""Policy files as validated data, the pycasbin enforcer they load into, and the index behind
``IndexedDecider``.

pycasbin is the single source of truth. ``load_policy_source`` reads ``model.conf`` and
``policy.csv`` once and checks them strictly (a typo must fail the load, never silently drop a
deny line). ``build_enforcer`` loads that text into a ``casbin.Enforcer`` with pycasbin's own
model parser and policy-line reader (``casbin.persist.load_policy_line``) and MUST refuse a policy
pycasbin reads differently from the strict check. ``PolicyIndex`` is then derived from the loaded
enforcer (its policy, its grouping policies, its role managers' hierarchy depth), for a model
whose matcher has the one supported shape, and reproduces ``enforce_ex``: the first matching
deny line if any, otherwise the last matching allow line. ``tests/gateway/test_policy.py``
compares the two on random requests (hypothesis) and random policies.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgate.errors import RegistryError
from fedgate.types import MemberId

__all__ = [
    "ALLOW",
    "CANONICAL_MATCHER",
    "DENY",
    "SELF",
    "PolicyConfigError",
    "PolicyIndex",
    "PolicyLine",
    "PolicySource",
    "SyntheticPolicy",
    "build_enforcer",
    "load_policy_source",
    "synthetic_policy",
]

ALLOW = "allow"
DENY = "deny"
SELF = "self"
"""A policy target meaning "the requesting member itself" (``r.obj == r.dom``)."""

CANONICAL_MATCHER = (
    "r_act == p_act && g(r_sub, p_sub, r_dom) && g3(r_dom, p_dom) && "
    '(g2(r_obj, p_obj) || (p_obj == "self" && r_obj == r_dom))'
)
_ALLOW_AND_DENY = "some(where (p_eft == allow)) && !some(where (p_eft == deny))"
_R_TOKENS = ["r_sub", "r_dom", "r_act", "r_obj"]
_P_TOKENS = ["p_sub", "p_dom", "p_act", "p_obj", "p_eft"]
_G_ARITY = {"g": 3, "g2": 2, "g3": 2}
_LINE_ARITY = {"p": 5, **_G_ARITY}
_NAME = re.compile(r"[A-Za-z0-9_.:-]+")
_MAX_REPORTED = 5


class PolicyConfigError(RegistryError):
    """The policy model or policy file is missing, malformed or of an unsupported shape."""

    reason = "POLICY_INVALID"


@dataclass(frozen=True, slots=True)
class PolicyLine:
    """One ``p`` line, with its position (pycasbin's order decides which rule is reported)."""

    index: int
    sub: str
    dom: str
    act: str
    obj: str
    eft: str

    @property
    def rule(self) -> tuple[str, ...]:
        return ("p", self.sub, self.dom, self.act, self.obj, self.eft)


@dataclass(frozen=True, slots=True)
class PolicySource:
    """A validated model and policy, ready to build a decider from."""

    model_path: Path
    policy_path: Path
    model_text: str
    policy_text: str
    matcher: str
    lines: tuple[PolicyLine, ...]
    g: tuple[tuple[str, str, str], ...]
    g2: tuple[tuple[str, str], ...]
    g3: tuple[tuple[str, str], ...]

    @property
    def matcher_is_canonical(self) -> bool:
        return _squash(self.matcher) == _squash(CANONICAL_MATCHER)


def _squash(text: str) -> str:
    return "".join(text.split())


def load_policy_source(model: Path, policy: Path) -> PolicySource:
    """Read and validate both files. Raises ``PolicyConfigError`` naming the file and line."""
    model_text = _read(model)
    matcher = _check_model(model, model_text)
    policy_text = _read(policy)
    lines, g, g2, g3 = _parse_policy(policy, policy_text)
    return PolicySource(
        model_path=model,
        policy_path=policy,
        model_text=model_text,
        policy_text=policy_text,
        matcher=matcher,
        lines=lines,
        g=g,
        g2=g2,
        g3=g3,
    )


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise PolicyConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PolicyConfigError(f"{path} is not UTF-8: {exc.reason}") from exc


def new_casbin_model(text: str, *, where: Path) -> Any:
    """A fresh pycasbin ``Model`` from text; its bare errors become ``PolicyConfigError``."""
    import casbin

    try:
        return casbin.Enforcer.new_model(text=text)
    except Exception as exc:  # pycasbin raises bare RuntimeError/KeyError/IndexError here
        raise PolicyConfigError(f"{where}: invalid Casbin model: {exc}") from exc


def build_enforcer(source: PolicySource, members: Mapping[MemberId, str]) -> Any:
    """A ``casbin.Enforcer`` holding ``source`` as pycasbin reads it, plus the registry's
    member -> kind links (``g2`` and ``g3``). Raises ``PolicyConfigError`` if pycasbin refuses
    the model or reads a line differently from ``load_policy_source``'s strict check."""
    import casbin
    from casbin.persist.adapter import load_policy_line

    model = new_casbin_model(source.model_text, where=source.model_path)
    for raw in source.policy_text.splitlines():
        load_policy_line(raw.strip(), model)  # pycasbin's FileAdapter reads each line so
    read = {
        "p": [tuple(rule) for rule in model["p"]["p"].policy],
        "g": [tuple(rule) for rule in model["g"]["g"].policy],
        "g2": [tuple(rule) for rule in model["g"]["g2"].policy],
        "g3": [tuple(rule) for rule in model["g"]["g3"].policy],
    }
    checked = {
        "p": [line.rule[1:] for line in source.lines],
        "g": list(source.g),
        "g2": list(source.g2),
        "g3": list(source.g3),
    }
    if read != checked:  # fail closed: the enforcer must hold exactly what was checked
        differ = sorted(key for key in read if read[key] != checked[key])
        raise PolicyConfigError(
            f"{source.policy_path}: pycasbin reads the {', '.join(differ)} lines differently "
            "from the policy check; refusing the policy"
        )
    links = [[member, kind] for member, kind in members.items()]
    model["g"]["g2"].policy.extend(list(link) for link in links)
    model["g"]["g3"].policy.extend(list(link) for link in links)
    try:
        enforcer = casbin.Enforcer(model)
        enforcer.build_role_links()
    except Exception as exc:  # pycasbin's bare RuntimeError/TypeError
        raise PolicyConfigError(f"{source.model_path}: pycasbin refused the model: {exc}") from exc
    return enforcer


def _check_model(path: Path, text: str) -> str:
    model = new_casbin_model(text, where=path)

    sections = list(model.keys())

    def value(sec: str, key: str) -> Any:
        if sec not in sections or key not in model[sec]:
            raise PolicyConfigError(f"{path}: the model lacks {key} = ...")
        return model[sec][key]

    problems = []
    if [t.strip() for t in value("r", "r").tokens] != _R_TOKENS:
        problems.append("request_definition must be r = sub, dom, act, obj")
    if [t.strip() for t in value("p", "p").tokens] != _P_TOKENS:
        problems.append("policy_definition must be p = sub, dom, act, obj, eft")
    if value("e", "e").value != _ALLOW_AND_DENY:
        problems.append("policy_effect must allow on an allow line unless a deny line matches")
    groups = model["g"] if "g" in sections else {}
    shape = {key: str(ast.value).count("_") for key, ast in groups.items()}
    if shape != _G_ARITY:
        problems.append("role_definition must be g = _, _, _ and g2 = _, _ and g3 = _, _")
    if problems:
        raise PolicyConfigError(f"{path}: unsupported model: {'; '.join(problems)}")
    return str(value("m", "m").value)


def _parse_policy(
    path: Path, text: str
) -> tuple[
    tuple[PolicyLine, ...],
    tuple[tuple[str, str, str], ...],
    tuple[tuple[str, str], ...],
    tuple[tuple[str, str], ...],
]:
    # Same tokenising as pycasbin's FileAdapter for every line that passes the name check below
    # (names cannot hold brackets, so its nesting rules never apply).
    lines: list[PolicyLine] = []
    g: list[tuple[str, str, str]] = []
    g2: list[tuple[str, str]] = []
    g3: list[tuple[str, str]] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        key, values = fields[0], fields[1:]
        arity = _LINE_ARITY.get(key)
        if arity is None:
            errors.append(f"line {number}: unknown line type {key!r} (expected p, g, g2 or g3)")
        elif len(values) != arity:
            errors.append(f"line {number}: {key} needs {arity} fields, got {len(values)}")
        elif bad := [v for v in values if not _NAME.fullmatch(v)]:
            errors.append(f"line {number}: invalid name {bad[0]!r} (letters, digits, _ . : -)")
        elif key == "p":
            if values[4] not in (ALLOW, DENY):
                errors.append(f"line {number}: effect must be allow or deny, got {values[4]!r}")
            else:
                lines.append(PolicyLine(len(lines), *values))
        elif key == "g":
            g.append((values[0], values[1], values[2]))
        else:
            (g2 if key == "g2" else g3).append((values[0], values[1]))
    if not lines and not errors:
        errors.append("no p lines: an empty policy is refused rather than denying everything")
    if errors:
        shown = "; ".join(errors[:_MAX_REPORTED])
        more = f" (and {len(errors) - _MAX_REPORTED} more)" if len(errors) > _MAX_REPORTED else ""
        raise PolicyConfigError(f"{path}: {shown}{more}")
    return tuple(lines), tuple(g), tuple(g2), tuple(g3)


class _Graph:
    """Directed links with pycasbin's reachability: distance 0..``levels`` - 1, where ``levels``
    is the role manager's ``max_hierarchy_level``."""

    __slots__ = ("_levels", "_next")

    def __init__(self, links: Iterable[Sequence[str]], *, levels: int) -> None:
        self._levels = levels
        self._next: dict[str, set[str]] = {}
        for child, parent in links:
            self._next.setdefault(child, set()).add(parent)

    def closure(self, start: str) -> frozenset[str]:
        seen = {start}
        frontier = {start}
        for _ in range(self._levels - 1):
            frontier = {p for node in frontier for p in self._next.get(node, ())} - seen
            if not frontier:
                break
            seen |= frontier
        return frozenset(seen)


_Cell = list[int]  # [first deny index or -1, last allow index or -1]
_CACHE_LIMIT = 65_536


class PolicyIndex:
    """``act -> sub -> dom -> obj -> (first deny, last allow)`` plus memoised closures, derived
    from a loaded ``casbin.Enforcer`` (``build_enforcer``): its ``p`` lines in pycasbin's order,
    its ``g``/``g2``/``g3`` links (member links included) and its role managers' depth."""

    def __init__(self, enforcer: Any, members: Mapping[MemberId, str]) -> None:
        self._lines = tuple(
            PolicyLine(i, *rule) for i, rule in enumerate(enforcer.get_named_policy("p"))
        )
        self._table: dict[str, dict[str, dict[str, dict[str, _Cell]]]] = {}
        self._allows: dict[str, dict[str, list[PolicyLine]]] = {}
        for line in self._lines:
            if line.eft == ALLOW:
                self._allows.setdefault(line.act, {}).setdefault(line.sub, []).append(line)
            subs = self._table.setdefault(line.act, {})
            cell = (
                subs.setdefault(line.sub, {})
                .setdefault(line.dom, {})
                .setdefault(line.obj, [-1, -1])
            )
            if line.eft == DENY:
                if cell[0] < 0:
                    cell[0] = line.index
            else:
                cell[1] = line.index
        levels = {
            ptype: int(enforcer.get_named_role_manager(ptype).max_hierarchy_level)
            for ptype in ("g", "g2", "g3")
        }
        domains: dict[str, list[tuple[str, str]]] = {}
        for user, role, domain in enforcer.get_named_grouping_policy("g"):
            domains.setdefault(domain, []).append((user, role))
        self._roles = {
            domain: _Graph(pairs, levels=levels["g"]) for domain, pairs in domains.items()
        }
        self._g2 = _Graph(enforcer.get_named_grouping_policy("g2"), levels=levels["g2"])
        self._g3 = _Graph(enforcer.get_named_grouping_policy("g3"), levels=levels["g3"])
        self._target_kinds: dict[str, frozenset[str]] = {m: self._g2.closure(m) for m in members}
        self._member_kinds: dict[str, frozenset[str]] = {m: self._g3.closure(m) for m in members}
        self._role_cache: dict[tuple[str, str], frozenset[str]] = {}

    def roles(self, role: str, member: str) -> frozenset[str]:
        """``role`` and every role it inherits inside ``member`` (pycasbin's ``g`` with domain)."""
        key = (role, member)
        found = self._role_cache.get(key)
        if found is None:
            graph = self._roles.get(member)
            found = graph.closure(role) if graph is not None else frozenset((role,))
            if len(self._role_cache) >= _CACHE_LIMIT:
                self._role_cache.clear()
            self._role_cache[key] = found
        return found

    def member_kinds(self, member: str) -> frozenset[str]:
        found = self._member_kinds.get(member)
        return found if found is not None else self._g3.closure(member)

    def target_kinds(self, target: str, member: str) -> frozenset[str]:
        found = self._target_kinds.get(target)
        if found is None:
            found = self._g2.closure(target)
        return found | {SELF} if target == member else found

    def match(self, role: str, member: str, action: str, target: str) -> PolicyLine | None:
        """The rule pycasbin's ``enforce_ex`` reports; allowed iff it is an allow line."""
        subs = self._table.get(action)
        if subs is None:
            return None
        deny = -1
        allow = -1
        objs: frozenset[str] | None = None
        doms = self.member_kinds(member)
        for sub in self.roles(role, member):
            by_dom = subs.get(sub)
            if by_dom is None:
                continue
            for dom in doms:
                by_obj = by_dom.get(dom)
                if by_obj is None:
                    continue
                if objs is None:
                    objs = self.target_kinds(target, member)
                for obj in objs:
                    cell = by_obj.get(obj)
                    if cell is None:
                        continue
                    if cell[0] >= 0 and (deny < 0 or cell[0] < deny):
                        deny = cell[0]
                    if cell[1] > allow:
                        allow = cell[1]
        if deny >= 0:
            return self._lines[deny]
        return self._lines[allow] if allow >= 0 else None

    def explain_no_match(self, role: str, member: str, action: str, target: str) -> str:
        """Why no allow line matched: the first of role, member, target ruling out every line."""
        allows = self._allows.get(action)
        if allows is None:
            return f"no allow rule for action {action!r}"
        roles = self.roles(role, member)
        shown = _names(roles)
        by_role = [line for sub in roles for line in allows.get(sub, ())]
        if not by_role:
            return (
                f"no allow rule gives role {role!r} (effective roles at {member}: {shown}) "
                f"action {action!r}; roles with it: {_names(allows)}"
            )
        kinds = self.member_kinds(member)
        by_dom = [line for line in by_role if line.dom in kinds]
        if not by_dom:
            return (
                f"rules giving {shown} action {action!r} are for requesting members "
                f"{_names(line.dom for line in by_role)}; {member} is {_names(kinds - {member})}"
            )
        covered = _names(
            f"{SELF} (only {member})" if line.obj == SELF else line.obj for line in by_dom
        )
        kinds = self.target_kinds(target, member) - {target, SELF}
        return (
            f"rules giving {shown} at {member} action {action!r} cover targets {covered}; "
            f"{target} is {_names(kinds) or 'not a member of any kind'}"
        )


def _names(values: Iterable[str], limit: int = 8) -> str:
    names = sorted(set(values))
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


_KINDS = ("police", "bank", "carrier", "central_bank", "auditor", "gateway")


@dataclass(frozen=True, slots=True)
class SyntheticPolicy:
    """A generated policy for equivalence tests and benchmarks (never a real policy)."""

    text: str
    members: Mapping[MemberId, str]
    roles: tuple[str, ...]
    actions: tuple[str, ...]
    lines: tuple[tuple[str, ...], ...]
    links: tuple[tuple[str, str, str], ...]

    def requests(self, count: int, *, seed: int) -> list[tuple[str, str, str, str]]:
        """``(role, member, action, target)`` tuples: about half aimed at a policy line (through a
        role link where one exists), the rest with one field changed or drawn at random."""
        rng = random.Random(seed)  # noqa: S311 -- seeded test data, not secrets
        members: list[str] = sorted(self.members)
        by_kind: dict[str, list[str]] = {}
        for name in members:
            by_kind.setdefault(self.members[MemberId(name)], []).append(name)
        groups = {"grp0": ["bank", "carrier"], "grp1": ["police", "central_bank", "auditor"]}
        users: dict[str, list[tuple[str, str]]] = {}
        for user, role, domain in self.links:
            users.setdefault(role, []).append((user, domain))
        out: list[tuple[str, str, str, str]] = []
        for _ in range(count):
            sub, dom, act, obj, _eft = rng.choice(self.lines)
            member: str = rng.choice(by_kind[dom]) if dom in by_kind else dom
            role = sub
            if users.get(sub) and rng.random() < 0.5:
                role, member = rng.choice(users[sub])
            kind = rng.choice(groups[obj]) if obj in groups else obj
            target = member if obj == SELF else rng.choice(by_kind.get(kind, [obj]))
            req = [role, member, act, target]
            roll = rng.random()
            if roll < 0.3:
                field = rng.randrange(4)
                pools = (self.roles, members, self.actions, members)
                req[field] = rng.choice(pools[field])
            elif roll < 0.4:
                req = [rng.choice(self.roles), rng.choice(members)]
                req += [rng.choice(self.actions), rng.choice(members)]
            elif roll < 0.42:
                req[rng.randrange(4)] = "unknown.name"
            out.append((req[0], req[1], req[2], req[3]))
        return out


def synthetic_policy(total_lines: int, *, seed: int) -> SyntheticPolicy:
    """About ``total_lines`` lines: half ``g`` role links inside members, half ``p`` lines
    (15% deny) over member kinds, members, the groups ``grp0``/``grp1`` and ``self``."""
    rng = random.Random(seed)  # noqa: S311 -- seeded test data, not secrets
    n_links = total_lines // 2
    n_lines = total_lines - n_links - 5
    members: dict[MemberId, str] = {}
    for i in range(max(12, total_lines // 50)):
        kind = _KINDS[i % len(_KINDS)]
        members[MemberId(f"{kind}.m{i}")] = kind
    names = sorted(members)
    roles = tuple(f"role{i}" for i in range(max(8, total_lines // 40)))
    actions = tuple(f"act{i}" for i in range(max(6, total_lines // 100)))
    groups = ["g2, bank, grp0", "g2, carrier, grp0", "g2, police, grp1"]
    groups += ["g2, central_bank, grp1", "g2, auditor, grp1"]
    links: list[tuple[str, str, str]] = []
    for _ in range(n_links):
        a, b = rng.sample(roles, 2)
        links.append((a, b, rng.choice(names)))
    lines: list[tuple[str, ...]] = []
    for _ in range(n_lines):
        dom = rng.choice(_KINDS) if rng.random() < 0.5 else rng.choice(names)
        roll = rng.random()
        if roll < 0.4:
            obj = rng.choice(_KINDS)
        elif roll < 0.7:
            obj = rng.choice(names)
        else:
            obj = rng.choice(["grp0", "grp1", SELF])
        eft = DENY if rng.random() < 0.15 else ALLOW
        lines.append((rng.choice(roles), dom, rng.choice(actions), obj, eft))
    text = "\n".join(
        [
            *groups,
            *(f"g, {a}, {b}, {d}" for a, b, d in links),
            *(f"p, {', '.join(line)}" for line in lines),
        ]
    )
    return SyntheticPolicy(
        text=text + "\n",
        members=members,
        roles=roles,
        actions=actions,
        lines=tuple(lines),
        links=tuple(links),
    )
