"""The config of one gateway instance among several on one PostgreSQL database.

Every multi-instance setup (``fedgate up --gateways N``, the scale-out fault tests, the
scale-out benchmark) writes its gateway configs through ``write_instance_config``, so that what
"several instances sharing their state" means is said in one place: the audit log on
PostgreSQL (a shard of its own per instance, one schema for all) and every piece of state that
instances must share (``SHARED_SETTINGS``) on the same database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedgate.config import dump_toml

__all__ = ["SHARED_SETTINGS", "PgTarget", "instance_settings", "write_instance_config"]

SHARED_SETTINGS: Mapping[str, Mapping[str, Any]] = {
    "shared": {"store": "postgres"},
}
"""What several instances MUST share besides their audit shards, section by section: merged
into every instance's config (the gateway refuses workers without it, ``gateway.workers``).
``[shared] store = "postgres"`` puts the replay cache, recorded outcomes, business-rule state,
quotas, tickets, alert streams and console logouts in the database (docs/operations.md)."""


@dataclass(frozen=True, slots=True)
class PgTarget:
    """The shared database: libpq DSN and the audit schema (the other stores derive theirs)."""

    dsn: str = field(repr=False)
    schema: str = "fedgate_audit"


def instance_settings(
    *,
    listen: str,
    federation_dir: Path | str,
    state_dir: Path | str,
    origin: str,
    pg: PgTarget,
    witnesses: Sequence[str] = (),
    extra: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The sections of one instance's gateway config. ``extra`` adds or replaces options,
    section by section (``{"routing": {"endpoints": {...}}, "console": {"listen": ...}}``)."""
    settings: dict[str, dict[str, Any]] = {
        "server": {"listen": listen},
        "federation": {"dir": str(federation_dir)},
        "pipeline": {"state_dir": str(state_dir)},
        "audit": {
            "origin": origin,
            "store": "postgres",
            "dsn": pg.dsn,
            "schema": pg.schema,
            "witnesses": list(witnesses),
        },
    }
    for source in (SHARED_SETTINGS, extra or {}):
        for section, values in source.items():
            settings.setdefault(section, {}).update(values)
    return settings


def write_instance_config(
    path: Path,
    *,
    header: str = "one of several gateway instances sharing one PostgreSQL database",
    **settings: Any,
) -> Path:
    """Write ``instance_settings(**settings)`` to ``path`` (TOML) and return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(instance_settings(**settings), header=header), encoding="utf-8")
    return path
