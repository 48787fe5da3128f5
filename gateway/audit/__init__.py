"""The gateway's audit log: a transparency log of every exchange, its stores and witnesses.

``AuditLog`` (group commit, signed checkpoints, receipts) writes through an ``AuditStore``:
``open_sqlite_store`` (embedded) or ``open_pg_store`` (shared by several instances, one shard
each). ``Witness`` and ``WitnessServicer`` are what witnesses run; ``GrpcWitnessClient`` is how
the log reaches them. ``gateway.audit.service.AuditServicer`` serves the log to auditors and
agencies (imported from its module: it pulls in the policy engine).
"""

from __future__ import annotations

from fedgate.witness import (
    GrpcWitnessClient,
    Witness,
    WitnessClient,
    WitnessConflict,
    WitnessServicer,
)
from gateway.audit.log import AuditLog, Receipt
from gateway.audit.pg_store import open_pg_store
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import AuditStore, SearchQuery

__all__ = [
    "AuditLog",
    "AuditStore",
    "GrpcWitnessClient",
    "Receipt",
    "SearchQuery",
    "Witness",
    "WitnessClient",
    "WitnessConflict",
    "WitnessServicer",
    "open_pg_store",
    "open_sqlite_store",
]
