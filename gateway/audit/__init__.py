"""The gateway's audit log: a transparency log of every exchange, its stores and witnesses.

``AuditLog`` (group commit, signed checkpoints, receipts) writes through an ``AuditStore``:
``open_sqlite_store`` (embedded) or ``open_pg_store`` (shared by several instances, one shard
each). ``Witness`` and ``WitnessServicer`` are what witnesses run; ``GrpcWitnessClient`` is how
the log reaches them. ``gateway.audit.service.AuditServicer`` serves the log to auditors and
agencies (imported from its module: it pulls in the policy engine).

With a key-encryption key (``FileKeyWrapper``, or any ``KeyWrapper`` over an HSM or KMS) the
log seals personal data into a ``BodyVault`` beside the leaves; ``RetentionPolicy`` and
``run_retention`` destroy case keys when their retention ends (docs/privacy.md).
"""

from __future__ import annotations

from fedgate.kek import write_kek_file
from fedgate.witness import (
    GrpcWitnessClient,
    Witness,
    WitnessClient,
    WitnessConflict,
    WitnessServicer,
)
from gateway.audit._bodies import BodyDeleted, BodyVault, OpenedReader, holds_sealed_bodies
from gateway.audit._keys import FileKeyWrapper, KeyWrapper
from gateway.audit._retention import RetentionPolicy, retention_loop, run_retention
from gateway.audit.log import AuditLog, Receipt
from gateway.audit.pg_store import open_pg_store
from gateway.audit.sqlite_store import open_sqlite_store
from gateway.audit.store import AuditStore, SearchQuery

__all__ = [
    "AuditLog",
    "AuditStore",
    "BodyDeleted",
    "BodyVault",
    "FileKeyWrapper",
    "GrpcWitnessClient",
    "KeyWrapper",
    "OpenedReader",
    "Receipt",
    "RetentionPolicy",
    "SearchQuery",
    "Witness",
    "WitnessClient",
    "WitnessConflict",
    "WitnessServicer",
    "holds_sealed_bodies",
    "open_pg_store",
    "open_sqlite_store",
    "retention_loop",
    "run_retention",
    "write_kek_file",
]
