"""The layout is part of the architecture: each gateway part's public names are pinned here.

A name added to or removed from a part's ``__all__`` is a deliberate change of its surface, so
this test must be updated with it. The import direction itself is checked by ``lint-imports``
(contracts in ``pyproject.toml``), run by ``make lint``.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "gateway.pipeline": {
        "CITING_ACTIONS",
        "PeerSource",
        "Pipeline",
        "subjects_of",
        "validate_request",
    },
    "gateway.policy": {
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
    },
    "gateway.console": {
        "AUDITOR_ROLE",
        "PAGE_SIZE",
        "REVEAL_FOR",
        "AuditorConsole",
        "Countermeasures",
        "RunningAuditorConsole",
        "start_auditor_console",
    },
}


class TestGatewayParts:
    @pytest.mark.parametrize("package", sorted(PUBLIC))
    def test_public_names_are_pinned(self, package: str) -> None:
        module = importlib.import_module(package)
        assert set(module.__all__) == PUBLIC[package]
        for name in module.__all__:
            assert getattr(module, name) is not None, name

    def test_no_flat_private_modules_left_in_gateway(self) -> None:
        from pathlib import Path

        import gateway

        flat = sorted(p.name for p in Path(gateway.__file__).parent.glob("_*.py"))
        assert flat == ["__init__.py"]


class TestWitnessIndependence:
    def test_witness_needs_only_fedgate(self) -> None:
        import ast
        from pathlib import Path

        import adapters.witness

        tree = ast.parse(Path(adapters.witness.__file__).read_text(encoding="utf-8"))
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        assert "gateway" not in roots
        assert "fedgate" in roots
