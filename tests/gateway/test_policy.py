"""Tests for gateway.policy: loading, both deciders agreeing, reloading, the CLI."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.errors import PolicyDenied, RegistryError
from fedgate.types import MemberId
from gateway.policy import (
    ACTIONS,
    DEFAULT_MEMBER_KINDS,
    ROLES,
    CasbinDecider,
    Decision,
    IndexedDecider,
    PolicyConfigError,
    PolicyDecider,
    PolicyRequest,
    ReloadingDecider,
    authorize,
    default_policy_dir,
    load_default_decider,
)
from gateway.policy import cli as policy_command
from gateway.policy._index import (
    PolicyIndex,
    SyntheticPolicy,
    build_enforcer,
    load_policy_source,
    synthetic_policy,
)

POLICIES = default_policy_dir()
MODEL = POLICIES / "model.conf"
POLICY = POLICIES / "policy.csv"


def req(role: str, member: str, action: str, target: str) -> PolicyRequest:
    return PolicyRequest.of(role=role, member=member, action=action, target=target)


def both(policy: Path, members: dict[MemberId, str] | None = None) -> list[PolicyDecider]:
    kinds = members if members is not None else DEFAULT_MEMBER_KINDS
    return [
        CasbinDecider.from_files(MODEL, policy, members=kinds),
        IndexedDecider.from_files(MODEL, policy, members=kinds),
    ]


def answer(decision: Decision) -> tuple[bool, tuple[str, ...] | None]:
    return decision.allowed, decision.rule


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    shutil.copy(MODEL, tmp_path / "model.conf")
    shutil.copy(POLICY, tmp_path / "policy.csv")
    return tmp_path


def write_policy(folder: Path, text: str) -> Path:
    path = folder / "policy.csv"
    path.write_text(text, encoding="utf-8")
    return path


class TestLoadPolicySource:
    def test_default_files_load(self) -> None:
        source = load_policy_source(MODEL, POLICY)
        assert source.matcher_is_canonical
        assert len(source.lines) > 50
        assert ("centre_supervisor", "police_investigator", "police.gd.afc") in source.g

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("P, a, b, c, d, allow\n", r"line 1: unknown line type 'P'"),
            ("p, a, b, c, d\n", r"line 1: p needs 5 fields, got 4"),
            ("p, a, b, c, d, allow\ng, a, b\n", r"line 2: g needs 3 fields, got 2"),
            ("p, a, b, c, d, permit\n", r"effect must be allow or deny, got 'permit'"),
            ("p, a, b, c, d, allow # why\n", r"invalid name 'allow # why'"),
            ("p, a b, b, c, d, allow\n", r"invalid name 'a b'"),
            ("p, a, , c, d, allow\n", r"invalid name ''"),
            ("# nothing\ng2, bank, agency\n", r"no p lines"),
        ],
    )
    def test_malformed_policy_is_refused(self, tmp_path: Path, text: str, message: str) -> None:
        path = write_policy(tmp_path, text)
        with pytest.raises(PolicyConfigError, match=message):
            load_policy_source(MODEL, path)

    def test_every_problem_up_to_five_is_reported(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, "x\n" * 7)
        with pytest.raises(PolicyConfigError, match=r"line 5: .*\(and 2 more\)$"):
            load_policy_source(MODEL, path)

    def test_not_utf8_is_refused(self, tmp_path: Path) -> None:
        path = tmp_path / "policy.csv"
        path.write_bytes(b"p, \xff, b, c, d, allow\n")
        with pytest.raises(PolicyConfigError, match="is not UTF-8"):
            load_policy_source(MODEL, path)

    def test_missing_file_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(PolicyConfigError, match=r"cannot read .*nope\.csv"):
            load_policy_source(MODEL, tmp_path / "nope.csv")

    def test_config_errors_are_registry_errors(self) -> None:
        assert issubclass(PolicyConfigError, RegistryError)
        assert PolicyConfigError("x").reason == "POLICY_INVALID"

    @pytest.mark.parametrize(
        ("old", "new", "message"),
        [
            ("r = sub, dom, act, obj", "r = sub, act, obj", "request_definition"),
            ("p = sub, dom, act, obj, eft", "p = sub, dom, act, obj", "policy_definition"),
            ("g3 = _, _\n", "", "role_definition"),
            ("!some(where (p.eft == deny))", "true", "policy_effect"),
        ],
    )
    def test_unsupported_model_is_refused(
        self, tmp_path: Path, old: str, new: str, message: str
    ) -> None:
        model = tmp_path / "model.conf"
        text = MODEL.read_text()
        assert old in text
        model.write_text(text.replace(old, new))
        with pytest.raises(PolicyConfigError, match=f"unsupported model: .*{message}"):
            load_policy_source(model, POLICY)

    def test_garbage_model_is_refused(self, tmp_path: Path) -> None:
        model = tmp_path / "model.conf"
        model.write_text("[request_definition]\nthis is not a model\n")
        with pytest.raises(PolicyConfigError, match=r"invalid Casbin model|lacks"):
            load_policy_source(model, POLICY)


class TestCasbinDecider:
    def test_allow_reports_the_matched_rule(self) -> None:
        decider = CasbinDecider.from_files(MODEL, POLICY)
        decision = decider.decide(
            req("police_investigator", "police.gz.unit", "freeze", "bank.ccb")
        )
        assert decision == Decision(
            allowed=True,
            rule=("p", "police_investigator", "police", "freeze", "bank", "allow"),
            explanation="allowed by p, police_investigator, police, freeze, bank, allow",
        )

    def test_inherited_role_is_named(self) -> None:
        decider = CasbinDecider.from_files(MODEL, POLICY)
        decision = decider.decide(req("centre_supervisor", "police.gd.afc", "freeze", "bank.ccb"))
        assert decision.allowed
        assert "centre_supervisor inherits police_investigator at police.gd.afc" in (
            decision.explanation
        )

    def test_deny_line_wins_and_is_named(self) -> None:
        decider = CasbinDecider.from_files(MODEL, POLICY)
        decision = decider.decide(req("auditor", "audit.office", "location", "carrier.cmcc"))
        assert not decision.allowed
        assert decision.rule == ("p", "auditor", "auditor", "location", "agency", "deny")
        assert decision.explanation.startswith("a deny rule wins: p, auditor")

    def test_a_custom_matcher_works_with_casbin_only(self, tmp_path: Path) -> None:
        model = tmp_path / "model.conf"
        model.write_text(MODEL.read_text().replace("g(r.sub, p.sub, r.dom)", "r.sub == p.sub"))
        decider = CasbinDecider.from_files(model, POLICY)
        decision = decider.decide(
            req("police_investigator", "police.gz.unit", "freeze", "bank.ccb")
        )
        assert decision.allowed
        no_inheritance = decider.decide(req("centre_supervisor", "police.gd.afc", "freeze", "bank"))
        assert not no_inheritance.allowed
        with pytest.raises(PolicyConfigError, match="IndexedDecider supports only"):
            IndexedDecider.from_files(model, POLICY)

    def test_a_matcher_failing_at_decision_time_raises_config_error(self, tmp_path: Path) -> None:
        model = tmp_path / "model.conf"
        model.write_text(MODEL.read_text().replace("r.act == p.act", "r.act == p.act && nope"))
        decider = CasbinDecider.from_files(model, POLICY)
        with pytest.raises(PolicyConfigError, match="pycasbin failed to decide: 'nope'"):
            decider.decide(req("police_investigator", "police.gz.unit", "freeze", "bank.ccb"))


class TestBothDeciders:
    """Behaviour both deciders must share; the equivalence tests are in TestIndexedDecider."""

    @pytest.mark.parametrize("which", [0, 1])
    @pytest.mark.parametrize(
        ("request_", "why"),
        [
            (req("sheriff", "police.gz.unit", "freeze", "bank.icbc"), "role 'sheriff'"),
            (req("police_investigator", "police.gz.unit", "teleport", "bank.icbc"), "'teleport'"),
            (req("police_investigator", "police.xx", "freeze", "bank.icbc"), "not in the member"),
            (
                req("police_investigator", "police.gz.unit", "freeze", "bank.xx"),
                "not in the member",
            ),
            (req("", "police.gz.unit", "freeze", "bank.icbc"), "empty role"),
        ],
    )
    def test_unknown_names_are_denied(self, which: int, request_: PolicyRequest, why: str) -> None:
        decision = both(POLICY)[which].decide(request_)
        assert not decision.allowed
        assert decision.rule is None
        assert why in decision.explanation

    @pytest.mark.parametrize("which", [0, 1])
    def test_kind_disagreeing_with_registry_is_denied(self, which: int) -> None:
        forged = PolicyRequest(
            role="bank_staff",
            member=MemberId("police.gz.unit"),
            member_kind="bank",
            action="case_report",
            target=MemberId("police.gd.afc"),
            target_kind="police",
        )
        decision = both(POLICY)[which].decide(forged)
        assert not decision.allowed
        assert "police.gz.unit is of kind 'police', not 'bank'" in decision.explanation

    @pytest.mark.parametrize("which", [0, 1])
    def test_denials_say_which_part_failed(self, which: int) -> None:
        decider = both(POLICY)[which]
        member = decider.decide(req("centre_supervisor", "bank.icbc", "freeze", "bank.ccb"))
        assert "roles with it: police_investigator" in member.explanation
        target = decider.decide(req("bank_staff", "bank.icbc", "audit_read_own", "bank.ccb"))
        assert "cover targets self (only bank.icbc); bank.ccb is agency, bank" in (
            target.explanation
        )
        kind = decider.decide(req("police_investigator", "bank.icbc", "freeze", "bank.ccb"))
        assert "are for requesting members police; bank.icbc is bank" in kind.explanation

    def test_authorize_raises_policy_denied(self) -> None:
        decider = IndexedDecider.from_files(MODEL, POLICY)
        ok = authorize(decider, req("police_investigator", "police.gz.unit", "freeze", "bank.ccb"))
        assert ok.allowed
        with pytest.raises(PolicyDenied, match=r"auditor at audit\.office may not freeze at bank"):
            authorize(decider, req("auditor", "audit.office", "freeze", "bank.ccb"))


SMALL_MEMBERS = {
    MemberId("police.a"): "police",
    MemberId("bank.a"): "bank",
    MemberId("bank.b"): "bank",
}


class TestIndexedDecider:
    @pytest.mark.parametrize(
        ("text", "request_", "expected"),
        [
            # the last matching allow line is the reported one, as in pycasbin
            (
                "p, r1, police, a, bank, allow\np, r1, police.a, a, bank.a, allow\n",
                ("r1", "police.a", "a", "bank.a"),
                (True, ("p", "r1", "police.a", "a", "bank.a", "allow")),
            ),
            # the first matching deny line wins, wherever the allow lines are
            (
                "p, r1, police, a, bank, deny\np, r1, police, a, bank.a, allow\n"
                "p, r1, police.a, a, bank, deny\n",
                ("r1", "police.a", "a", "bank.a"),
                (False, ("p", "r1", "police", "a", "bank", "deny")),
            ),
            # self only when the target is the requesting member
            (
                "p, r1, bank, a, self, allow\n",
                ("r1", "bank.a", "a", "bank.b"),
                (False, None),
            ),
            (
                "p, r1, bank, a, self, allow\n",
                ("r1", "bank.a", "a", "bank.a"),
                (True, ("p", "r1", "bank", "a", "self", "allow")),
            ),
            # groups through g2, transitively
            (
                "g2, bank, agency\ng2, agency, anyone\np, r1, police, a, anyone, allow\n",
                ("r1", "police.a", "a", "bank.b"),
                (True, ("p", "r1", "police", "a", "anyone", "allow")),
            ),
            # role links count only inside their member
            (
                "g, r2, r1, police.x\np, r1, police, a, bank, allow\n",
                ("r2", "police.a", "a", "bank.a"),
                (False, None),
            ),
        ],
    )
    def test_matches_casbin_on_hand_made_cases(
        self,
        tmp_path: Path,
        text: str,
        request_: tuple[str, str, str, str],
        expected: tuple[bool, tuple[str, ...] | None],
    ) -> None:
        path = write_policy(tmp_path, text)
        role, member, action, target = request_
        r = PolicyRequest.of(
            role=role, member=member, action=action, target=target, members=SMALL_MEMBERS
        )
        answers = [answer(d.decide(r)) for d in both(path, SMALL_MEMBERS)]
        assert answers == [expected, expected]

    @pytest.mark.parametrize("depth", [1, 8, 9, 10, 11])
    def test_role_chains_stop_where_casbin_stops(self, tmp_path: Path, depth: int) -> None:
        chain = "".join(f"g, r{i}, r{i + 1}, police.a\n" for i in range(depth))
        path = write_policy(tmp_path, chain + f"p, r{depth}, police, a, bank, allow\n")
        r = PolicyRequest.of(
            role="r0", member="police.a", action="a", target="bank.a", members=SMALL_MEMBERS
        )
        casbin, indexed = (answer(d.decide(r)) for d in both(path, SMALL_MEMBERS))
        assert casbin == indexed
        assert casbin[0] is (depth <= 9)

    def test_cycles_terminate(self, tmp_path: Path) -> None:
        text = "g, r1, r2, police.a\ng, r2, r1, police.a\np, r2, police, a, bank, allow\n"
        path = write_policy(tmp_path, text)
        r = PolicyRequest.of(
            role="r1", member="police.a", action="a", target="bank.a", members=SMALL_MEMBERS
        )
        assert [d.decide(r).allowed for d in both(path, SMALL_MEMBERS)] == [True, True]

    def test_matches_casbin_on_the_default_policy(self) -> None:
        casbin, indexed = both(POLICY)
        members = sorted(DEFAULT_MEMBER_KINDS)
        roles = sorted(ROLES)
        actions = sorted(ACTIONS)
        checked = 0
        for i, (role, action) in enumerate((r, a) for r in roles for a in actions):
            for j, member in enumerate(members):
                target = members[(i + j) % len(members)]
                r = req(role, member, action, target)
                assert answer(casbin.decide(r)) == answer(indexed.decide(r)), r
                checked += 1
        assert checked == len(roles) * len(actions) * len(members)

    @pytest.mark.parametrize(("size", "count"), [(100, 400), (1_000, 300), (10_000, 60)])
    def test_matches_casbin_on_synthetic_policies(
        self, tmp_path: Path, size: int, count: int
    ) -> None:
        synthetic = synthetic_policy(size, seed=size)
        path = write_policy(tmp_path, synthetic.text)
        casbin, indexed = both(path, dict(synthetic.members))
        outcomes = set()
        for role, member, action, target in synthetic.requests(count, seed=7):
            r = PolicyRequest.of(
                role=role, member=member, action=action, target=target, members=synthetic.members
            )
            expected = answer(casbin.decide(r))
            assert answer(indexed.decide(r)) == expected, r
            outcomes.add("allow" if expected[0] else "deny rule" if expected[1] else "no rule")
        # every path is exercised (a deny line is rare in a small sample of the big policy)
        assert outcomes >= (
            {"allow", "no rule"} if size == 10_000 else {"allow", "deny rule", "no rule"}
        )

    @given(data=st.data())
    @settings(max_examples=150, deadline=None)
    def test_matches_casbin_on_arbitrary_requests(
        self, small_synthetic: SmallSynthetic, data: st.DataObject
    ) -> None:
        synthetic, casbin, indexed = small_synthetic
        names = sorted(synthetic.members)
        r = PolicyRequest.of(
            role=data.draw(st.sampled_from([*synthetic.roles, "nobody"])),
            member=data.draw(st.sampled_from(names)),
            action=data.draw(st.sampled_from(synthetic.actions)),
            target=data.draw(st.sampled_from(names)),
            members=synthetic.members,
        )
        assert answer(casbin.decide(r)) == answer(indexed.decide(r))

    def test_repeated_decisions_are_identical(self) -> None:
        decider = IndexedDecider.from_files(MODEL, POLICY)
        r = req("bank_staff", "bank.icbc", "audit_read_own", "bank.ccb")
        assert decider.decide(r) is decider.decide(r)


_NAMES = st.sampled_from(["r0", "r1", "r2", "r3"])
_MEMBERS = {
    MemberId("police.a"): "police",
    MemberId("police.b"): "police",
    MemberId("bank.a"): "bank",
    MemberId("carrier.a"): "carrier",
}
_DOMS = st.sampled_from(["police", "bank", "police.a", "police.b", "bank.a"])
_OBJS = st.sampled_from(["bank", "carrier", "agency", "bank.a", "carrier.a", "self", "police"])
_LINES = st.tuples(
    _NAMES, _DOMS, st.sampled_from(["a1", "a2"]), _OBJS, st.sampled_from(["allow", "allow", "deny"])
)
_LINKS = st.tuples(_NAMES, _NAMES, st.sampled_from(["police.a", "police.b", "bank.a"]))


class TestPycasbinIsTheSource:
    """The index is derived from the enforcer pycasbin loaded; pycasbin decides what is right."""

    def test_the_index_reads_the_enforcers_policy_not_the_files(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, "p, r1, police, a, bank, allow\n")
        source = load_policy_source(MODEL, path)
        enforcer = build_enforcer(source, SMALL_MEMBERS)
        enforcer.add_policy("r1", "police", "a", "bank", "deny")  # only pycasbin knows this line
        index = PolicyIndex(enforcer, SMALL_MEMBERS)
        matched = index.match("r1", "police.a", "a", "bank.a")
        assert matched is not None
        assert matched.rule == ("p", "r1", "police", "a", "bank", "deny")
        assert enforcer.enforce_ex("r1", "police.a", "a", "bank.a")[0] is False

    @pytest.mark.parametrize("levels", [2, 4])
    def test_the_role_depth_is_the_role_managers(self, tmp_path: Path, levels: int) -> None:
        chain = "".join(f"g, r{i}, r{i + 1}, police.a\n" for i in range(4))
        path = write_policy(tmp_path, chain + "p, r4, police, a, bank, allow\n")
        enforcer = build_enforcer(load_policy_source(MODEL, path), SMALL_MEMBERS)
        enforcer.get_role_manager().max_hierarchy_level = levels
        index = PolicyIndex(enforcer, SMALL_MEMBERS)
        for start in range(5):
            allowed = enforcer.enforce_ex(f"r{start}", "police.a", "a", "bank.a")[0]
            assert (index.match(f"r{start}", "police.a", "a", "bank.a") is not None) == allowed
            assert allowed is (4 - start < levels)

    def test_a_policy_pycasbin_reads_differently_is_refused(self, tmp_path: Path) -> None:
        path = write_policy(tmp_path, "p, r1, police, a, bank, allow\n")
        source = load_policy_source(MODEL, path)
        sneaky = dataclasses.replace(
            source, policy_text=source.policy_text + "p, r1, police, a, bank, deny\n"
        )
        with pytest.raises(PolicyConfigError, match="pycasbin reads the p lines differently"):
            build_enforcer(sneaky, SMALL_MEMBERS)

    @given(
        lines=st.lists(_LINES, min_size=1, max_size=12),
        links=st.lists(_LINKS, max_size=6),
        groups=st.lists(st.sampled_from(["bank", "carrier", "police"]), max_size=3, unique=True),
        request_=st.tuples(
            _NAMES,
            st.sampled_from(sorted(_MEMBERS)),
            st.sampled_from(["a1", "a2"]),
            st.sampled_from(sorted(_MEMBERS)),
        ),
    )
    @settings(max_examples=150, deadline=None)
    def test_random_policies_and_requests_agree_with_pycasbin(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        lines: list[tuple[str, ...]],
        links: list[tuple[str, str, str]],
        groups: list[str],
        request_: tuple[str, str, str, str],
    ) -> None:
        text = "".join(f"g2, {kind}, agency\n" for kind in groups)
        text += "".join(f"g, {u}, {r}, {d}\n" for u, r, d in links)
        text += "".join(f"p, {', '.join(line)}\n" for line in lines)
        path = write_policy(tmp_path_factory.mktemp("random-policy"), text)
        enforcer = build_enforcer(load_policy_source(MODEL, path), _MEMBERS)
        role, member, action, target = request_
        allowed, rule = enforcer.enforce_ex(role, member, action, target)
        matched = PolicyIndex(enforcer, _MEMBERS).match(role, member, action, target)
        assert (matched is not None and matched.eft == "allow") == bool(allowed)
        assert (matched.rule[1:] if matched is not None else None) == (
            tuple(rule) if rule else None
        )


SmallSynthetic = tuple[SyntheticPolicy, CasbinDecider, IndexedDecider]


@pytest.fixture(scope="module")
def small_synthetic(tmp_path_factory: pytest.TempPathFactory) -> SmallSynthetic:
    synthetic = synthetic_policy(300, seed=3)
    path = write_policy(tmp_path_factory.mktemp("synthetic"), synthetic.text)
    members = dict(synthetic.members)
    return (
        synthetic,
        CasbinDecider.from_files(MODEL, path, members=members),
        IndexedDecider.from_files(MODEL, path, members=members),
    )


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


FREEZE = req("police_investigator", "police.gz.unit", "freeze", "bank.icbc")


def edit(path: Path, text: str) -> None:
    """Rewrite a file and move its mtime, so even a coarse clock sees the change."""
    before = path.stat().st_mtime_ns
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


class TestReloadingDecider:
    def test_picks_up_an_edited_policy(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=0)
        assert decider.decide(FREEZE).allowed
        policy = policy_dir / "policy.csv"
        edit(policy, policy.read_text().replace("freeze, bank, allow", "freeze, bank, deny"))
        decision = decider.decide(FREEZE)
        assert not decision.allowed
        assert decision.rule == ("p", "police_investigator", "police", "freeze", "bank", "deny")
        assert decider.generation == 2

    def test_checks_files_at_most_once_per_interval(self, policy_dir: Path) -> None:
        clock = FakeClock()
        decider = ReloadingDecider(
            model=policy_dir / "model.conf",
            policy=policy_dir / "policy.csv",
            check_interval_ms=500,
            clock=clock,
        )
        policy = policy_dir / "policy.csv"
        edit(policy, policy.read_text().replace("freeze, bank, allow", "freeze, bank, deny"))
        clock.now += 0.4
        assert decider.decide(FREEZE).allowed
        clock.now += 0.2
        assert not decider.decide(FREEZE).allowed

    def test_corrupted_policy_keeps_the_old_one(
        self, policy_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=0)
        edit(policy_dir / "policy.csv", "p, police_investigator, police, freeze\n")
        with caplog.at_level(logging.ERROR, logger="gateway.policy"):
            assert decider.decide(FREEZE).allowed
        assert "keeping the previous policy" in caplog.text
        assert decider.last_error is not None
        assert "p needs 5 fields" in decider.last_error
        assert decider.generation == 1
        assert not decider.reload()

    def test_a_repaired_policy_loads_again(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=0)
        good = (policy_dir / "policy.csv").read_text()
        edit(policy_dir / "policy.csv", "garbage\n")
        assert decider.decide(FREEZE).allowed
        edit(policy_dir / "policy.csv", good.replace("freeze, bank, allow", "freeze, bank, deny"))
        assert not decider.decide(FREEZE).allowed
        assert decider.last_error is None

    def test_corrupted_model_keeps_the_old_policy(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=0)
        edit(policy_dir / "model.conf", "[matchers]\nm = true\n")
        assert decider.decide(FREEZE).allowed
        assert decider.last_error is not None

    def test_denies_everything_until_a_policy_loads(
        self, policy_dir: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        good = (policy_dir / "policy.csv").read_text()
        (policy_dir / "policy.csv").unlink()
        with caplog.at_level(logging.ERROR, logger="gateway.policy"):
            decider = load_default_decider(policy_dir, check_interval_ms=0)
        assert "denying every request" in caplog.text
        assert not decider.loaded
        decision = decider.decide(FREEZE)
        assert not decision.allowed
        assert decision.explanation.startswith("no policy loaded (cannot read")
        write_policy(policy_dir, good)
        assert decider.decide(FREEZE).allowed

    def test_reload_on_demand(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=3_600_000)
        policy = policy_dir / "policy.csv"
        edit(policy, policy.read_text().replace("freeze, bank, allow", "freeze, bank, deny"))
        assert decider.decide(FREEZE).allowed
        assert decider.reload()
        assert not decider.decide(FREEZE).allowed

    def test_new_members_take_effect(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=3_600_000)
        newcomer = req("police_investigator", "police.gz.unit", "freeze", "bank.boc")
        assert not decider.decide(newcomer).allowed
        assert decider.set_members({**DEFAULT_MEMBER_KINDS, MemberId("bank.boc"): "bank"})
        newcomer = PolicyRequest(
            role="police_investigator",
            member=MemberId("police.gz.unit"),
            member_kind="police",
            action="freeze",
            target=MemberId("bank.boc"),
            target_kind="bank",
        )
        assert decider.decide(newcomer).allowed

    def test_casbin_factory(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, factory=CasbinDecider.from_files)
        assert decider.decide(FREEZE).allowed

    def test_negative_interval_is_refused(self, policy_dir: Path) -> None:
        with pytest.raises(ValueError, match="check_interval_ms must be >= 0"):
            load_default_decider(policy_dir, check_interval_ms=-1)

    def test_default_folder_is_the_shipped_policy(self) -> None:
        decider = load_default_decider()
        assert decider.loaded
        assert decider.decide(FREEZE).allowed


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    policy_command.register(parser.add_subparsers(required=True))
    args = parser.parse_args(["policy", *argv])
    code: int = args.func(args)
    return code


class TestPolicyCommand:
    def test_explain_allowed_exits_0(self, capsys: pytest.CaptureFixture[str]) -> None:
        code = run_cli(
            "explain",
            *("--role", "police_investigator", "--member", "police.gz.unit"),
            *("--action", "stop_payment", "--target", "bank.icbc"),
        )
        out = capsys.readouterr().out
        assert code == 0
        assert "ALLOWED" in out
        assert "rule:    p, police_investigator, police, stop_payment, bank, allow" in out

    def test_explain_denied_exits_1(self, capsys: pytest.CaptureFixture[str]) -> None:
        code = run_cli(
            "explain",
            *("--role", "police_duty_officer", "--member", "police.gz.unit"),
            *("--action", "freeze", "--target", "bank.icbc"),
        )
        out = capsys.readouterr().out
        assert code == 1
        assert "DENIED" in out
        assert "a deny rule wins: p, police_duty_officer, police, freeze, bank, deny" in out

    def test_explain_no_rule(self, capsys: pytest.CaptureFixture[str]) -> None:
        code = run_cli(
            "explain",
            *("--role", "bank_staff", "--member", "bank.icbc"),
            *("--action", "audit_read_own", "--target", "bank.ccb"),
        )
        out = capsys.readouterr().out
        assert code == 1
        assert "rule:    (none)" in out
        assert "cover targets self (only bank.icbc)" in out

    def test_explain_broken_policy_exits_2(
        self, policy_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        write_policy(policy_dir, "nonsense\n")
        code = run_cli(
            "explain",
            *("--role", "auditor", "--member", "audit.office"),
            *("--action", "audit_read", "--target", "gateway"),
            *("--policy-dir", str(policy_dir)),
        )
        assert code == 2
        assert "unknown line type 'nonsense'" in capsys.readouterr().err

    def test_test_passes_on_shipped_tables(self, capsys: pytest.CaptureFixture[str]) -> None:
        assert run_cli("test") == 0
        last = capsys.readouterr().out.strip().splitlines()[-1]
        passed = int(last.split()[0])
        assert passed >= 120
        assert last == f"{passed} passed, 0 failed"

    def test_test_reports_failures_and_exits_1(
        self, policy_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        tests = policy_dir / "tests"
        tests.mkdir()
        (tests / "t.csv").write_text(
            "role,member,action,target,expected,rule\n"
            "auditor,audit.office,audit_read,gateway,allow\n"
            "auditor,audit.office,freeze,bank.icbc,allow\n"
            "auditor,audit.office,audit_read,gateway,allow,"
            '"p, auditor, x, audit_read, gateway, allow"\n'
        )
        assert run_cli("test", "--policy-dir", str(policy_dir)) == 1
        out = capsys.readouterr().out
        assert "FAIL t.csv:3: auditor at audit.office freeze -> bank.icbc allow" in out
        assert "expected rule p, auditor, x, audit_read, gateway, allow" in out
        assert out.strip().splitlines()[-1] == "1 passed, 2 failed"

    def test_test_without_tables_exits_2(
        self, policy_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert run_cli("test", "--policy-dir", str(policy_dir)) == 2
        assert "no truth-table rows" in capsys.readouterr().err

    def test_malformed_table_exits_2(
        self, policy_dir: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        (policy_dir / "tests").mkdir()
        (policy_dir / "tests" / "t.csv").write_text("auditor,audit.office,audit_read,maybe\n")
        assert run_cli("test", "--policy-dir", str(policy_dir)) == 2
        assert "t.csv:1: expected role,member,action,target" in capsys.readouterr().err


class TestReloadingDeciderConcurrency:
    def test_decisions_continue_during_reloads(self, policy_dir: Path) -> None:
        decider = load_default_decider(policy_dir, check_interval_ms=0)
        policy = policy_dir / "policy.csv"
        good = policy.read_text()
        errors: list[BaseException] = []
        stop = threading.Event()

        def ask() -> None:
            try:
                while not stop.is_set():
                    assert decider.decide(FREEZE).allowed
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ask) for _ in range(2)]
        for thread in threads:
            thread.start()
        for i in range(10):
            edit(policy, good + f"# edit {i}\n" if i % 2 else "broken\n")
            decider.reload()
        stop.set()
        for thread in threads:
            thread.join()
        assert errors == []
        assert decider.generation >= 5
