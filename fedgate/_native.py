"""The switch for the mypyc-compiled modules (``make native``, ``scripts/build_native.py``).

A compiled module is a ``.so`` beside its ``.py``, and Python imports the extension first. With
``FEDGATE_NATIVE=0`` in the environment, :func:`obey_switch` puts a finder in front that loads
every ``fedgate`` and ``gateway`` module from its source instead, so one build can be measured
and tested both ways. The package ``__init__`` files call it before any other import.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from types import ModuleType

__all__ = ["PACKAGES", "compiled", "obey_switch"]

PACKAGES = ("fedgate", "gateway")


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Finds a module of ``PACKAGES`` as its ``.py`` file, passing over a compiled ``.so``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if path is None or fullname.partition(".")[0] not in PACKAGES:
            return None
        leaf = fullname.rpartition(".")[2]
        for entry in path:
            source = os.path.join(entry, leaf + ".py")
            if os.path.isfile(source):
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def obey_switch() -> None:
    """Import the modules of ``PACKAGES`` from source when ``FEDGATE_NATIVE=0``."""
    if os.environ.get("FEDGATE_NATIVE") == "0":
        if not any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
            sys.meta_path.insert(0, _SourceFirst())


def compiled(module: ModuleType) -> bool:
    """Whether ``module`` was loaded from a compiled extension rather than its source."""
    return isinstance(module.__loader__, importlib.machinery.ExtensionFileLoader)
