"""Federation fixtures: real PKIs made by ``fedgate.pki`` once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedgate.federation import DEFAULT_MEMBERS
from fedgate.pki import init_federation
from fedgate.registry import Registry


@pytest.fixture(scope="session")
def federation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default federation (``DEFAULT_MEMBERS``), made once. Treat it as read-only; use
    ``mutable_federation`` to change a copy."""
    return init_federation(tmp_path_factory.mktemp("federation") / "fed")


@pytest.fixture(scope="session")
def federation_registry(federation_dir: Path) -> Registry:
    """The verified registry of ``federation_dir``."""
    return Registry.load_dir(federation_dir)


@pytest.fixture(scope="session")
def other_federation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated federation (its own CA and administrator key)."""
    return init_federation(tmp_path_factory.mktemp("other-federation") / "fed")


@pytest.fixture(scope="session")
def small_federation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-member federation (gateway and bank.icbc), small enough to corrupt byte by byte."""
    members = tuple(m for m in DEFAULT_MEMBERS if m.id in ("gateway", "bank.icbc"))
    return init_federation(tmp_path_factory.mktemp("small-federation") / "fed", members=members)


@pytest.fixture
def mutable_federation(federation_dir: Path, tmp_path: Path) -> Path:
    """A private copy of ``federation_dir`` that a test may change."""
    copy = tmp_path / "fed"
    shutil.copytree(federation_dir, copy)
    return copy
