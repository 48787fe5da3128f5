"""``make bench``: run every benchmark, print ``name: value unit``, write bench/results.json.

Each benchmark module has ``run(quick: bool) -> dict[str, tuple[float, str]]``. Figures are
measured side by side with their baseline in the same run; none of them is a test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

MODULES: tuple[str, ...] = (
    "bench_policy",
    "bench_backends",
    "bench_node",
    "bench_pipeline",
    "bench_audit",
    "bench_scale",
    "bench_e2e",
    "bench_errors",
    "bench_chase",
    "bench_risklist",
    "bench_shared",
    "bench_scaleout",
    "bench_privacy",
)
RESULTS = Path(__file__).with_name("results.json")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:  # `python -m bench profile`: the per-component CPU table
        from bench.profile import main as profile_main

        return profile_main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="a short run (under two minutes)")
    parser.add_argument(
        "--soak",
        action="store_true",
        help="only the soak: the whole federation at 70 %% of its peak for ten minutes",
    )
    parser.add_argument(
        "--only", nargs="*", choices=MODULES, default=None, help="run only these modules"
    )
    args = parser.parse_args(argv)
    results: dict[str, dict[str, float | str]] = {}
    if args.only or args.soak:  # a partial run updates the figures it measured, keeps the rest
        try:
            results = json.loads(RESULTS.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            results = {}
    for name in ("soak",) if args.soak else MODULES:
        if args.only and name not in args.only:
            continue
        print(f"# {name}{' (quick)' if args.quick else ''}", file=sys.stderr, flush=True)
        started = time.perf_counter()
        module = importlib.import_module(f"bench.{name}")
        figures: dict[str, tuple[float, str]] = module.run(args.quick)
        for figure, (value, unit) in figures.items():
            print(f"{figure}: {value:.6g} {unit}", flush=True)
            results[figure] = {"value": value, "unit": unit}
        print(f"# {name} took {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"# wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
