"""Policy decisions: ``IndexedDecider`` against plain pycasbin on synthetic policies.

Policies of 100, 1,000 and 10,000 lines, half of them ``g`` role links (5,000 at 10k). Before
timing, both deciders must agree on a sample of requests (allowed and matched rule), or the
benchmark fails. ``policy_decision_us_*`` times a fresh decider on a stream of *distinct*
requests, so none is answered from the decision cache (``policy_distinct_requests_*`` says how
many); ``policy_decision_cached_us_10k`` is the same stream again,
answered from the cache as repeated requests are in the gateway. The pycasbin baseline is warmed
up (100 calls) and then timed on 1,000 distinct requests; ``--quick`` warms it with 10 and times
100 (pycasbin takes ~23 ms a call at 10k lines: 1,000 calls alone would be a third of the quick
run's two minutes). ``casbin_timed_calls_10k`` says how many calls the baseline was timed on.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from gateway.policy import CasbinDecider, IndexedDecider, PolicyRequest, default_policy_dir
from gateway.policy._index import SyntheticPolicy, synthetic_policy

__all__ = ["run"]

MODEL = default_policy_dir() / "model.conf"
SIZES = {"100": 100, "1k": 1_000, "10k": 10_000}


def _requests(synthetic: SyntheticPolicy, count: int, seed: int) -> list[PolicyRequest]:
    return [
        PolicyRequest.of(
            role=role, member=member, action=action, target=target, members=synthetic.members
        )
        for role, member, action, target in synthetic.requests(count, seed=seed)
    ]


def _distinct(synthetic: SyntheticPolicy, count: int, seed: int) -> list[PolicyRequest]:
    """Up to ``count`` distinct requests (a small policy may not have that many)."""
    seen: dict[PolicyRequest, None] = {}
    for attempt in range(8):
        for req in _requests(synthetic, count, seed=seed + attempt):
            seen.setdefault(req, None)
            if len(seen) >= count:
                return list(seen)
    return list(seen)


def _check_agreement(
    casbin: CasbinDecider, indexed: IndexedDecider, sample: list[PolicyRequest]
) -> None:
    for req in sample:
        want, got = casbin.decide(req), indexed.decide(req)
        if (want.allowed, want.rule) != (got.allowed, got.rule):
            raise AssertionError(f"deciders disagree on {req}: {want} != {got}")


def _per_call_us(calls: int, started: float) -> float:
    return (time.perf_counter() - started) / calls * 1e6


def run(quick: bool) -> dict[str, tuple[float, str]]:
    stream_size = 2_000 if quick else 10_000
    passes = 2 if quick else 10
    sample_size = (
        {"100": 200, "1k": 100, "10k": 20} if quick else {"100": 500, "1k": 300, "10k": 80}
    )
    casbin_warmup, casbin_calls = (10, 100) if quick else (100, 1_000)
    figures: dict[str, tuple[float, str]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        for label, size in SIZES.items():
            synthetic = synthetic_policy(size, seed=size)
            policy = Path(tmp) / f"policy-{label}.csv"
            policy.write_text(synthetic.text, encoding="utf-8")
            members = dict(synthetic.members)
            casbin = CasbinDecider.from_files(MODEL, policy, members=members)
            _check_agreement(
                casbin,
                IndexedDecider.from_files(MODEL, policy, members=members),
                _requests(synthetic, sample_size[label], seed=1),
            )

            stream = _distinct(synthetic, stream_size, seed=2)
            elapsed = 0.0
            for _ in range(passes):
                # A fresh decider each pass and distinct requests: every one misses the cache.
                decide = IndexedDecider.from_files(MODEL, policy, members=members).decide
                started = time.perf_counter()
                for req in stream:
                    decide(req)
                elapsed += time.perf_counter() - started
            uncached = elapsed / (passes * len(stream)) * 1e6
            figures[f"policy_decision_us_{label}"] = (uncached, "us")
            figures[f"policy_distinct_requests_{label}"] = (float(len(stream)), "requests")
            if label == "10k":
                started = time.perf_counter()
                for _ in range(passes):
                    for req in stream:
                        decide(req)
                figures["policy_decision_cached_us_10k"] = (
                    _per_call_us(passes * len(stream), started),
                    "us",
                )
                enforcer = casbin.enforcer
                for req in _distinct(synthetic, casbin_warmup, seed=90):
                    enforcer.enforce(req.role, req.member, req.action, req.target)
                calls = _distinct(synthetic, casbin_calls, seed=3)
                started = time.perf_counter()
                for req in calls:
                    enforcer.enforce(req.role, req.member, req.action, req.target)
                casbin_us = _per_call_us(len(calls), started)
                figures["casbin_decision_us_10k"] = (casbin_us, "us")
                figures["casbin_timed_calls_10k"] = (float(len(calls)), "calls")
                figures["policy_speedup_vs_casbin_10k"] = (casbin_us / uncached, "x")
    return figures


if __name__ == "__main__":
    for name, (value, unit) in run(quick=True).items():
        print(f"{name}: {value:.6g} {unit}")
