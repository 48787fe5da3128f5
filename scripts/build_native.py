"""Compile the hot pure-Python modules with mypyc, in place (``make native``).

Each module listed in ``MODULES`` gets a ``<module>.cpython-*.so`` beside its ``.py``; Python
imports the extension before the source, and the ``.py`` stays the reference
(``FEDGATE_NATIVE=0`` loads it instead of the build, see ``fedgate/_native.py``). The modules
form one group, so calls between them are direct C calls; the group's shared library is
``fedgate/_native__mypyc*.so``. Build files go to ``build/`` (git-ignored).

An experiment of issue 13 (branch ``mypyc``): the end-to-end gain was not measurable, see
docs/benchmarks.md, "Native compilation with mypyc".

Usage: ``python scripts/build_native.py [module.py ...]`` (default: ``MODULES``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODULES = (
    "fedgate/audit_entry.py",
    "fedgate/checkpoint.py",
    "fedgate/envelope.py",
    "fedgate/merkle.py",
    "fedgate/note.py",
    "fedgate/tiles.py",
    "fedgate/tlogproof.py",
    "fedgate/validate.py",
    "gateway/pipeline/_fields.py",
    "gateway/pipeline/validation.py",
    "gateway/pipeline/_stages.py",
    "gateway/pipeline/_forwarding.py",
    "gateway/pipeline/_audit_legs.py",
    "gateway/pipeline/_exchange.py",
    "gateway/pipeline/_officers.py",
    "gateway/audit/log.py",
    "gateway/routing.py",
    "gateway/replay.py",
    "gateway/quotas.py",
    "fedgate/keys.py",
)


def main(argv: list[str]) -> int:
    from mypyc.build import mypycify
    from setuptools import setup

    os.chdir(ROOT)
    modules = argv or list(MODULES)
    setup(
        name="fedgate-native",
        ext_modules=mypycify(modules, group_name="fedgate._native", opt_level="3"),
        script_args=["--quiet", "build_ext", "--inplace", "--build-temp", "build/native", "-j", "2"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
