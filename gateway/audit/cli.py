"""``fedgate audit``: verify, search, show, prove and export from an audit log database.

The log is read straight from its database: ``--db PATH`` (the gateway's SQLite file) or
``--pg DSN`` (PostgreSQL; ``--origin`` picks a shard, every shard without it). Keys come from a
federation directory (``--federation DIR``: ``trust/`` and ``registry.json``, nothing private):
the log's checkpoint key is each signing key of the registry's gateway members, under the
log's origin as key name, unless ``--log-key VKEY`` names it; witnesses are the members with
the ``witness`` role, under their member id.

``search`` and ``show`` print identifiers masked (``fedgate.web.protoview.mask_tree``): a
terminal is a page like any other. Identifiers in full come only through an audited reveal
(``AuditService.RevealEntry``, the auditor console), which this offline reader cannot log.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import grpc
import grpc.aio
from google.protobuf.message import DecodeError as ProtobufDecodeError

from fedgate.audit_entry import (
    EntryKind,
    EventEntry,
    RequestLeg,
    ResponseLeg,
    decode_entry,
    micros_to_time,
    time_to_micros,
)
from fedgate.auditverify import (
    Failure,
    LogSource,
    VerifyOptions,
    VerifyReport,
    check_cross_shard_links,
    settle_retirements,
    verify_log,
)
from fedgate.checkpoint import CosignatureVerifier, parse_checkpoint
from fedgate.commands.users import add_user_parser
from fedgate.errors import FedgateError, InvalidArgument, NotFound, VerificationError
from fedgate.evidence import (
    build_bundle,
    check_witness_policy,
    log_verifiers,
    verify_bundle,
    witness_verifiers,
)
from fedgate.keys import public_key_from_raw
from fedgate.note import NoteVerifier, parse_note
from fedgate.protojson import iso_time, message_dict
from fedgate.registry import Registry
from fedgate.render import CST
from fedgate.tiles import TILE_WIDTH, TiledTree
from fedgate.tlogproof import TlogProof
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import envelope_pb2, request_pb2
from fedgate.web.auth import Role
from fedgate.web.protoview import mask_tree
from fedgate.witness import GrpcWitnessClient
from gateway.audit._migrate import migrate
from gateway.audit._retention_cli import add_retention_parser
from gateway.audit.store import CHECKPOINT_INTERVAL, IndexedRow, SearchQuery

__all__ = ["register"]

PROGRESS_CHUNK = 20_000
PARALLEL_FROM = 4_096
"""``verify`` uses every CPU (up to 8) for a shard of at least this many entries, one process
below: a forked worker starts in about 10 ms, less than a core saves on 4,096 entries' checks
(5–6 µs each without signatures, ~100 µs with them; ``docs/benchmarks.md``)."""


def _verify_jobs(entries: int) -> int:
    return min(os.cpu_count() or 1, 8) if entries >= PARALLEL_FROM else 1


_LEGS = {EntryKind.REQUEST: "request", EntryKind.RESPONSE: "response", EntryKind.EVENT: "event"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``audit`` command group to the top-level ``fedgate`` parser."""
    group = subparsers.add_parser(
        "audit",
        help="verify and inspect the audit log",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    sub = group.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    add_user_parser(sub, Role.AUDITOR)

    verify = sub.add_parser(
        "verify",
        help="verify every entry, signature, checkpoint and cosignature (exit 1 on failure)",
        description="Recompute the tree from every entry, check every checkpoint signature "
        "and cosignature, consistency between successive checkpoints, the search index, and "
        "the signature of every request and response. Stops at the first problem and names "
        "the entry.",
    )
    _store_arguments(verify)
    _federation_argument(verify, required=True)
    verify.add_argument(
        "--no-signatures", action="store_true", help="skip request and response signatures"
    )
    verify.add_argument("--no-index", action="store_true", help="skip the search-index check")
    verify.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="worker processes (default: every CPU, up to 8, from 4,096 entries; else 1)",
    )
    verify.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    verify.add_argument(
        "--checkpoint",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint note cosigned by the witnesses (meeting the registry's witness "
        "policy); the log must not be smaller than or inconsistent with it (repeatable)",
    )
    verify.add_argument(
        "--from-witnesses",
        action="store_true",
        help="ask the witness policy's witnesses for the latest checkpoint each cosigned, and "
        "compare the log with every one (needs --member credentials in --federation)",
    )
    verify.add_argument(
        "--member", default="audit.office", help="whose TLS credentials ask the witnesses"
    )
    verify.add_argument(
        "--witness-endpoint",
        action="append",
        default=[],
        metavar="ID=HOST:PORT",
        help="a witness's endpoint, overriding the registry (repeatable)",
    )
    verify.add_argument(
        "--from",
        dest="start",
        type=int,
        default=0,
        metavar="N",
        help="verify entries from N on, starting from the stored tiles checked against the "
        "newest signed checkpoint at or before N (default: the whole log)",
    )
    verify.set_defaults(func=_verify)

    migrate = sub.add_parser(
        "migrate",
        help="move a log written before tiles to the tiled layout (gateway stopped)",
        description="Verify the log (entries against every signed checkpoint), add the C2SP "
        "tiles, time blocks and console rollups it lacks (resumable, the SQLite WAL kept "
        "bounded) and, on SQLite, build its key tiers, then verify it again, tiles included. "
        "Exit 1 if either verification fails.",
    )
    _store_arguments(migrate)
    _federation_argument(migrate, required=True)
    migrate.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    migrate.set_defaults(func=_migrate_command)

    search = sub.add_parser("search", help="find entries by officer, member, case, subject...")
    _store_arguments(search)
    for flag, text in (
        ("--officer", "officer id"),
        ("--member", "requesting or target member"),
        ("--case", "case number"),
        ("--action", "action name"),
        ("--subject", "account, ID or phone number (exact)"),
        ("--outcome", "allowed, refused, ok, node_fault, ..."),
        ("--request-id", "request id"),
        ("--since", "ISO time (China time if no offset), inclusive"),
        ("--until", "ISO time, exclusive"),
    ):
        search.add_argument(flag, default="", help=text)
    search.add_argument("--after", type=int, default=-1, help="only entries after this index")
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--json", action="store_true", help="one JSON object per line")
    search.set_defaults(func=_search)

    show = sub.add_parser("show", help="show one entry, decoded")
    _store_arguments(show)
    show.add_argument("index", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_show)

    prove = sub.add_parser("prove", help="print a C2SP tlog-proof of one entry")
    _store_arguments(prove)
    prove.add_argument("index", type=int)
    prove.add_argument(
        "--size",
        type=int,
        default=0,
        help="tree size, one the log kept a checkpoint at (the latest, the cosigned ones, and "
        "one per 256 entries); default: the latest",
    )
    prove.set_defaults(func=_prove)

    export = sub.add_parser("export", help="write an evidence bundle for one exchange")
    _store_arguments(export)
    export.add_argument("index", type=int)
    export.add_argument("--out", type=Path, required=True, help="bundle file to write")
    export.set_defaults(func=_export)

    check = sub.add_parser(
        "verify-bundle",
        help="verify an evidence bundle offline (exit 1 on failure)",
        description="Needs only the federation's public keys: trust/ and registry.json.",
    )
    check.add_argument("bundle", type=Path)
    _federation_argument(check, required=True)
    check.set_defaults(func=_verify_bundle)
    add_retention_parser(sub)


def _store_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", type=Path, help="the gateway's SQLite audit database")
    where.add_argument("--pg", metavar="DSN", help="PostgreSQL holding the audit shards")
    parser.add_argument("--origin", default="", help="the shard (PostgreSQL)")
    parser.add_argument("--schema", default="fedgate_audit", help="PostgreSQL schema")


def _federation_argument(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--federation",
        type=Path,
        required=required,
        help="federation directory with trust/ and registry.json (public keys only)",
    )
    parser.add_argument(
        "--log-key",
        action="append",
        default=[],
        metavar="VKEY",
        help="the log's checkpoint key (note vkey); default: the gateway members' keys",
    )


# -- opening the store -------------------------------------------------------------------------


class _Source(LogSource, Protocol):
    def search(self, query: SearchQuery) -> list[IndexedRow]: ...

    def checkpoint(self, size: int) -> str | None: ...

    def cosigned_covering(self, index: int) -> tuple[int, str] | None: ...


def _sources(args: argparse.Namespace) -> list[Callable[[], _Source]]:
    """A picklable opener per shard the arguments name."""
    if args.db is not None:
        from gateway.audit.sqlite_store import SqliteDatabase

        if not args.db.exists():
            raise NotFound(f"no audit database at {args.db}")
        return [functools.partial(SqliteDatabase, args.db, origin=None, writer=False)]
    from gateway.audit.pg_store import PgDatabase, list_origins

    origins = [args.origin] if args.origin else list_origins(args.pg, schema=args.schema)
    if not origins:
        raise NotFound(f"no audit shard in PostgreSQL schema {args.schema!r}")
    return [
        functools.partial(PgDatabase, args.pg, origin=o, schema=args.schema, writer=False)
        for o in origins
    ]


def _one_source(args: argparse.Namespace) -> _Source:
    sources = _sources(args)
    if len(sources) != 1:
        raise InvalidArgument("this database holds several shards: name one with --origin")
    return sources[0]()


def _log_keys(args: argparse.Namespace, registry: Registry, origin: str) -> list[NoteVerifier]:
    if args.log_key:
        try:
            return [NoteVerifier.from_vkey(v) for v in args.log_key]
        except ValueError as exc:
            raise InvalidArgument(f"--log-key: {exc}") from exc
    keys = log_verifiers(registry, origin)
    if not keys:
        raise InvalidArgument("the registry lists no gateway member: name the key with --log-key")
    return keys


# -- verify ----------------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    if args.start < 0:
        raise InvalidArgument("--from must be an entry number, 0 or more")
    registry = Registry.load_dir(args.federation)
    witnesses = witness_verifiers(registry)
    status = 0
    reports: list[VerifyReport] = []
    for opener in _sources(args):
        probe = opener()
        try:
            origin, total = probe.origin, probe.next_index()
        finally:
            probe.close()
        jobs = args.jobs or _verify_jobs(total)
        options = VerifyOptions(
            check_index=not args.no_index,
            federation=None if args.no_signatures else args.federation,
            jobs=jobs,
            chunk=PROGRESS_CHUNK,
        )
        progress = None if args.quiet else _progress
        try:
            witnessed = _witnessed(args, registry, origin)
        except VerificationError as exc:
            print(f"FAILED: {exc.message}")
            print(f"fedgate audit verify: {origin}: {exc.message}", file=sys.stderr)
            status = 1
            continue
        report = verify_log(
            opener,
            log_keys=_log_keys(args, registry, origin),
            witnesses=witnesses,
            options=options,
            progress=progress,
            witnessed=witnessed,
            start=args.start,
        )
        reports.append(report)
    # A retired range may be named by the event another shard's instance logged: print once
    # every shard is verified.
    reports = settle_retirements(reports)
    for report in reports:
        tiers = None
        if args.db is not None and not args.no_index and report.ok:
            tiers, differs = _check_key_tiers(args.db)
            if differs is not None:
                report, tiers = replace(report, failure=Failure(differs)), None
        _print_report(report, every_shard=args.db is not None or not args.origin, tiers=tiers)
        if not report.ok:
            status = 1
    return max(status, _check_links(args, reports))


def _check_key_tiers(path: Path) -> tuple[int, str | None]:
    """The SQLite log's key tiers against its search index (checked with it): how many, and
    what differs."""
    from gateway.audit.sqlite_store import SqliteDatabase

    db = SqliteDatabase(path, origin=None, writer=False)
    try:
        return db.check_key_tiers()
    finally:
        db.close()


def _check_links(args: argparse.Namespace, reports: list[VerifyReport]) -> int:
    """The response legs naming request legs in other shards (tickets answered through
    another instance): checked when every shard of the database was verified."""
    links = sum(len(r.links) for r in reports)
    if not links:
        return 0
    if args.db is not None or args.origin:
        print(
            f"  {links} response leg(s) name request legs in other shards: verify every shard "
            "(--pg without --origin) to check them"
        )
        return 0
    from gateway.audit.pg_store import PgDatabase

    failure = check_cross_shard_links(
        reports,
        functools.partial(_open_shard, PgDatabase, args.pg, args.schema),
        federation=None if args.no_signatures else args.federation,
    )
    if failure is not None:
        print(f"FAILED: {failure.message}")
        print(f"fedgate audit verify: {failure.message}", file=sys.stderr)
        return 1
    print(f"cross-shard links: {links} response leg(s) each name their request leg: OK")
    return 0


def _open_shard(database: Any, dsn: str, schema: str, origin: str) -> _Source:
    source: _Source = database(dsn, origin=origin, schema=schema, writer=False)
    return source


def _witnessed(args: argparse.Namespace, registry: Registry, origin: str) -> list[tuple[str, str]]:
    """The cosigned checkpoints to compare the log with: ``--checkpoint`` files (each must
    meet the witness policy) and, with ``--from-witnesses``, each witness's latest view.
    Raises ``VerificationError``."""
    found: list[tuple[str, str]] = []
    for path in args.checkpoint:
        try:
            note = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VerificationError(f"cannot read the checkpoint {path}: {exc}") from exc
        try:
            check_witness_policy(note, registry)
        except VerificationError as exc:
            raise VerificationError(f"{path}: {exc.message}") from exc
        found.append((f"the witnesses ({path})", note))
    if args.from_witnesses:
        found += asyncio.run(_ask_witnesses(args, registry, origin))
    return found


async def _ask_witnesses(
    args: argparse.Namespace, registry: Registry, origin: str
) -> list[tuple[str, str]]:
    policy = registry.effective_witness_policy()
    if policy is None:
        raise VerificationError("the registry names no witness to ask")
    try:
        endpoints = dict(item.split("=", 1) for item in args.witness_endpoint)
    except ValueError as exc:
        raise InvalidArgument("--witness-endpoint must be ID=HOST:PORT") from exc
    credentials = MemberCredentials.load(args.federation, MemberId(args.member))
    views: list[tuple[str, str]] = []
    problems: list[str] = []
    for name in policy.witnesses:
        witness = registry.member(name)
        key = max(witness.signing_keys, key=lambda k: k.not_before)
        channel = grpc.aio.secure_channel(
            endpoints.get(name) or witness.endpoint,
            channel_credentials(credentials),
            options=channel_options(witness.id),
        )
        client = GrpcWitnessClient(
            channel,
            verifier=CosignatureVerifier(name=name, public_key=public_key_from_raw(key.public_key)),
            timeout_s=5.0,
        )
        try:
            note = await client.latest_checkpoint(origin)
        except FedgateError as exc:
            problems.append(f"{name}: {exc.message}")
            continue
        finally:
            await channel.close(None)
        if note is None:
            problems.append(f"{name} never cosigned {origin}")
            continue
        views.append((f"witness {name}", note))
    if len(views) < policy.quorum:
        raise VerificationError(
            f"{len(views)} witness(es) gave their latest checkpoint; the witness policy requires "
            f"{policy}: {'; '.join(problems)}"
        )
    return views


def _progress(done: int, total: int, elapsed: float) -> None:
    if total <= PROGRESS_CHUNK:
        return
    rate = done / elapsed if elapsed > 0 else 0.0
    print(
        f"verified {done}/{total} entries ({100 * done / total:.0f}%, {rate:,.0f}/s)",
        file=sys.stderr,
        flush=True,
    )


def _retired_lines(r: VerifyReport, every_shard: bool) -> tuple[str | None, str | None]:
    """What was retired and from where the log was verified, and the failure when a retired
    range is named by no logged ``leaves_retired`` event."""
    if not r.retired:
        return None, None
    stop = r.retired[-1].stop
    named = [
        f"month {rng.month}, logged at entry {index}"
        + ("" if shard == r.origin else f" of {shard}")
        for rng, shard, index in r.retired_by
    ]
    line = (
        f"entries 0\u2013{stop - 1} retired ({'; '.join(named) or 'no logged retirement'}); "
        f"verified {r.verified_entries} entries from entry {r.verified_from}, against the "
        f"signed checkpoint at size {r.anchor} and every one after it"
    )
    if not r.unclaimed:
        return line, None
    first = r.unclaimed[0]
    problem = (
        f"entries {first.first}..{first.stop - 1} (month {first.month}) are missing from the "
        "store, which says they were retired, but no leaves_retired event in the verified log "
        "names them: they were removed without the retention job"
    )
    if not every_shard:
        problem += " (or its event is in another shard: verify every shard, without --origin)"
    return line, problem


def _print_report(r: VerifyReport, *, every_shard: bool = True, tiers: int | None = None) -> None:
    print(f"audit log {r.origin}")
    retired, unclaimed = _retired_lines(r, every_shard)
    if retired is not None:
        print(f"  retention    {retired}")
    rate = r.verified_entries / r.seconds if r.seconds > 0 else 0.0
    print(f"  entries      {r.verified_entries} of {r.entries} checked (hashes, decoding, links)")
    print(f"  checkpoints  {r.checkpoints} (log signature, recomputed root, consistency)")
    witnesses = ", ".join(f"{name}: {n}" for name, n in r.witnesses) or "none"
    print(f"  cosigned     {r.cosigned} (witnesses {witnesses})")
    print(f"  index        {'checked' if r.index_checked else 'not checked (--no-index)'}")
    if tiers is not None:
        print(f"  key tiers    {tiers} checked against the index")
    s = r.signatures
    if s is None:
        print("  signatures   not checked (--no-signatures)")
    else:
        print(
            f"  signatures   {s.requests_verified} allowed requests, {s.responses_verified} "
            f"responses verified; refused requests: {s.refused_signed} signed, "
            f"{s.refused_unverifiable} unverifiable; {s.responses_without_envelope} response "
            f"legs without a signed response; {s.node_faults_unverifiable} node faults; "
            f"{s.sealed} legs sealed (bodies encrypted beside the log)"
        )
    for source, size in r.witnessed:
        print(f"  witnessed    size {size} cosigned by {source}: the log extends it")
    print(f"  time         {r.seconds:.2f} s ({rate:,.0f} entries/s)")
    if r.failure is None and unclaimed is not None:
        print(f"FAILED at entry {r.unclaimed[0].first}: {unclaimed}")
        print(f"fedgate audit verify: {r.origin}: {unclaimed}", file=sys.stderr)
        return
    if r.failure is None:
        print("OK")
        return
    where = (
        f"entry {r.failure.index}"
        if r.failure.index is not None
        else (f"checkpoint {r.failure.size}" if r.failure.size is not None else "log")
    )
    print(f"FAILED at {where}: {r.failure.message}")
    print(f"fedgate audit verify: {r.origin}: {r.failure.message}", file=sys.stderr)


# -- migrate ---------------------------------------------------------------------------------


def _writer(args: argparse.Namespace, origin: str) -> Any:
    if args.db is not None:
        from gateway.audit.sqlite_store import SqliteDatabase

        return SqliteDatabase(args.db, origin=origin, writer=True)
    from gateway.audit.pg_store import PgDatabase

    return PgDatabase(args.pg, origin=origin, schema=args.schema, writer=True)


def _chunk_done(db: Any, quiet: bool, done: int, total: int) -> None:
    if hasattr(db, "checkpoint_wal"):
        db.checkpoint_wal()  # keep the WAL bounded (SQLite)
    if not quiet:
        print(f"migrated {done}/{total} entries", file=sys.stderr, flush=True)


def _partition_command(
    args: argparse.Namespace,
    registry: Registry,
    witnesses: Any,
    progress: Any,
) -> tuple[int, bool]:
    """PostgreSQL: verify every shard, move the schema's leaves into monthly partitions (an
    interrupted move resumes without verifying again), verify every shard from the partitions,
    and only then drop the old table. Returns the exit code and whether every shard was just
    verified (then ``migrate`` need not verify them again before its own steps)."""
    from gateway.audit.pg_store import (
        finish_partitioning,
        list_origins,
        partition_pending,
        partition_schema,
    )

    pending, resuming = partition_pending(args.pg, schema=args.schema)
    if not pending:
        return 0, False
    origins = list_origins(args.pg, schema=args.schema)
    if not resuming:
        for origin in origins:
            _writer(args, origin).close()  # brings the schema to this version (legacy layout)
        if not _verified(args, registry, witnesses, progress, origins, "before moving"):
            print("fedgate audit migrate: the log does not verify: nothing changed")
            return 1, False

    def moved(origin: str, done: int, total: int) -> None:
        if not args.quiet:
            print(f"partitioned {origin}: {done}/{total} entries", file=sys.stderr, flush=True)

    report = partition_schema(args.pg, schema=args.schema, progress=moved)
    print(f"moved {report.entries} entries into {report.months} monthly partitions")
    if not _verified(args, registry, witnesses, progress, origins, "after moving"):
        print(
            "fedgate audit migrate: the log does not verify from its partitions: the old "
            "table stays (leaves_unpartitioned); run `fedgate audit verify`"
        )
        return 1, False
    if finish_partitioning(args.pg, schema=args.schema):
        print("every shard verified from its monthly partitions: the old leaves are dropped")
    return 0, True


def _verified(
    args: argparse.Namespace,
    registry: Registry,
    witnesses: Any,
    progress: Any,
    origins: list[str],
    when: str,
) -> bool:
    """Verify the PostgreSQL shards ``origins`` of the schema together (entries against every
    checkpoint; a retired range may be named by another shard's event) and print them."""
    from gateway.audit.pg_store import PgDatabase

    openers: list[Callable[[], _Source]] = [
        functools.partial(PgDatabase, args.pg, origin=origin, schema=args.schema, writer=False)
        for origin in origins
    ]
    options = VerifyOptions(check_index=False, check_tiles=False)
    return _all_verified(args, registry, witnesses, progress, openers, options, when)


def _all_verified(
    args: argparse.Namespace,
    registry: Registry,
    witnesses: Any,
    progress: Any,
    openers: list[Callable[[], _Source]],
    options: VerifyOptions,
    when: str,
) -> bool:
    """Verify every shard of ``openers`` as ``fedgate audit verify`` does over every shard
    (``settle_retirements``: the instance that ran the retention job logged the retirement of
    every shard's range in its own) and print each report under ``when``; whether all
    verified."""
    reports: list[VerifyReport] = []
    for opener in openers:
        probe = opener()
        try:
            origin, total = probe.origin, probe.next_index()
        finally:
            probe.close()
        jobs = _verify_jobs(total)
        reports.append(
            verify_log(
                opener,
                log_keys=_log_keys(args, registry, origin),
                witnesses=witnesses,
                options=replace(options, jobs=jobs),
                progress=progress,
            )
        )
    ok = True
    for report in settle_retirements(reports):
        print(f"{when} {report.origin}:")
        _print_report(report)
        ok = ok and report.ok
    return ok


def _migrate_command(args: argparse.Namespace) -> int:
    registry = Registry.load_dir(args.federation)
    witnesses = witness_verifiers(registry)
    progress = None if args.quiet else _progress
    code, verified = 0, False  # ``verified``: every shard was just verified from partitions
    if args.pg is not None:
        code, verified = _partition_command(args, registry, witnesses, progress)
    if code:
        return code
    openers = _sources(args)
    if not verified and not _all_verified(
        args,
        registry,
        witnesses,
        progress,
        openers,
        VerifyOptions(check_index=False, check_tiles=False),
        "before migrating",
    ):
        print("fedgate audit migrate: the log does not verify: nothing changed")
        return 1
    for opener in openers:
        probe = opener()
        try:
            origin = probe.origin
        finally:
            probe.close()
        db = _writer(args, origin)
        tiers = ""
        try:
            result = migrate(db, after_chunk=functools.partial(_chunk_done, db, args.quiet))
            if args.db is not None:  # SQLite: its key tiers, built in the background otherwise
                if not args.quiet:
                    print("building the key tiers", file=sys.stderr, flush=True)
                tiers = ", key tiers: " + " + ".join(
                    f"{n} of level {level}" for level, n in enumerate(db.settle_key_tiers(), 1)
                )
        finally:
            db.close()
        print(
            f"migrated {origin}: {result.entries} entries, {result.tiles_added} tiles, "
            f"{result.blocks_added} time blocks, rollups of {result.rollups_backfilled} entries "
            f"added{tiers}"
        )
    options = VerifyOptions(check_index=False)
    if not _all_verified(args, registry, witnesses, progress, openers, options, "after migrating"):
        return 1
    return 0


# -- search and show ---------------------------------------------------------------------------


def _time_arg(text: str, flag: str) -> int | None:
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument(f"{flag}: {text!r} is not an ISO time") from exc
    if at.tzinfo is None:
        at = at.replace(tzinfo=CST)
    return time_to_micros(at)


def _search(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise InvalidArgument("--limit must be 1 to 10000")
    query = SearchQuery(
        officer_id=args.officer,
        member=args.member,
        case_number=args.case,
        action=args.action,
        subject=args.subject,
        outcome=args.outcome,
        request_id=args.request_id,
        since_us=_time_arg(args.since, "--since"),
        until_us=_time_arg(args.until, "--until"),
        after_index=args.after,
        limit=args.limit,
    )
    source = _one_source(args)
    try:
        hits = source.search(query)
    finally:
        source.close()
    rows = []
    for h in hits:
        c = h.columns
        row = {
            "index": h.index,
            "leg": _LEGS.get(EntryKind(c[0]), str(c[0])),
            "time": iso_time(micros_to_time(c[2])),
            "request_id": c[1],
            "requesting_agency": c[3],
            "officer_id": c[4],
            "case_number": c[5],
            "action": c[6],
            "target_agency": c[7],
            "outcome": c[8],
            "reason": c[9],
            "subjects": list(c[10]),
        }
        # What reaches a terminal is masked like every other page: identifiers in full only
        # through an audited reveal (AuditService.RevealEntry, the auditor console).
        rows.append(mask_tree(row))
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    columns = (
        "index",
        "leg",
        "time",
        "request_id",
        "requesting_agency",
        "officer_id",
        "case_number",
        "action",
        "target_agency",
        "outcome",
    )
    table = [[str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())
    if len(rows) == args.limit:
        print(f"(more may follow: --after {rows[-1]['index']})")
    return 0


def _message_json(raw: bytes, what: type[Any]) -> Any:
    message = what()
    try:
        message.ParseFromString(raw)
    except ProtobufDecodeError:
        return None
    return message_dict(message)


def _envelope_view(raw: bytes, body_type: type[Any]) -> dict[str, Any]:
    env = envelope_pb2.SignedEnvelope()
    try:
        env.ParseFromString(raw)
    except ProtobufDecodeError:
        return {"malformed": raw.hex()}
    return {
        "key_id": env.key_id,
        "signature": env.signature.hex(),
        "body": _message_json(env.body, body_type),
    }


def _entry_view(index: int, data: bytes) -> dict[str, Any]:
    entry = decode_entry(data)
    view: dict[str, Any] = {"index": index, "kind": type(entry).__name__}
    if isinstance(entry, RequestLeg):
        view.update(
            received_at=iso_time(entry.received_at),
            peer=entry.peer,
            peer_cert_sha256=entry.peer_cert_sha256,
            decision=entry.decision,
            rule=entry.rule,
            request_id=entry.request_id,
            requesting_agency=entry.requesting_agency,
            officer_id=entry.officer_id,
            case_number=entry.case_number,
            action=entry.action,
            target_agency=entry.target_agency,
            subjects=list(entry.subjects),
            envelope=_envelope_view(entry.envelope, request_pb2.Request),
        )
    elif isinstance(entry, ResponseLeg):
        view.update(
            received_at=iso_time(entry.received_at),
            request_id=entry.request_id,
            request_leaf_index=entry.request_leaf_index,
            responder=entry.responder,
            status=entry.status,
            detail=entry.detail,
            response_hash=entry.response_hash.hex(),
            responder_key_id=entry.responder_key_id,
        )
        if entry.response_envelope:
            view["response"] = _envelope_view(entry.response_envelope, request_pb2.Response)
    elif isinstance(entry, EventEntry):
        view.update(
            event=entry.kind,
            actor=entry.actor,
            member=entry.member,
            at=iso_time(entry.at),
            detail=dict(entry.detail),
        )
    return view


def _show(args: argparse.Namespace) -> int:
    source = _one_source(args)
    try:
        leaves = source.leaves(args.index, args.index + 1)
    finally:
        source.close()
    if not leaves:
        raise NotFound(f"no entry {args.index} in the log")
    view = mask_tree(_entry_view(args.index, leaves[0]))
    if args.json:
        print(json.dumps(view, ensure_ascii=False, indent=1))
        return 0
    for key, value in view.items():
        if isinstance(value, dict | list):
            value = json.dumps(value, ensure_ascii=False, indent=1).replace("\n", "\n    ")
        print(f"{key:20} {value}")
    return 0


# -- prove and export ------------------------------------------------------------------------


def _tree_and_checkpoint(source: _Source, size: int, covering: int) -> tuple[TiledTree, str, int]:
    """The tree read from the stored tiles (only the few a proof needs are read), and the
    checkpoint to prove against: the one stored at ``size``, else the newest cosigned one
    covering entry ``covering``, else the latest; each an indexed lookup. The tiles are checked
    against that checkpoint's root before use."""
    total = source.next_index()
    try:
        tree = TiledTree.open(
            size=total,
            leaf_hashes=source.leaf_hashes(total - total % TILE_WIDTH, total),
            read=source.tiles,
        )
    except ValueError as exc:
        raise VerificationError(
            f"the log's tiles are incomplete ({exc}): migrate it with `fedgate audit migrate`"
        ) from exc
    if size:
        note = source.checkpoint(size)
        if note is None:
            before = source.checkpoint_at_or_before(size)
            raise NotFound(
                f"the log keeps no checkpoint at size {size} (it keeps the latest and one per "
                f"{CHECKPOINT_INTERVAL} entries; the nearest below is at size "
                f"{before[0] if before else 0}, the receipt for an entry carries its own)"
            )
    else:
        found = source.cosigned_covering(covering) or source.checkpoint_at_or_before(total)
        if found is None:
            raise NotFound("the log has no checkpoint")
        size, note = found
    try:
        matches = size <= tree.size and tree.root(size) == (
            parse_checkpoint(parse_note(note).text).root_hash
        )
    except LookupError:
        matches = False
    if not matches:
        raise VerificationError(
            f"the stored tiles do not match the checkpoint of size {size}: run "
            "`fedgate audit verify`"
        )
    return tree, note, size


def _prove(args: argparse.Namespace) -> int:
    source = _one_source(args)
    try:
        tree, note, size = _tree_and_checkpoint(source, args.size, args.index)
        if not 0 <= args.index < size:
            raise NotFound(f"entry {args.index} is not in the tree of size {size}")
        # The proof reads full tiles through the source: close it only afterwards (a closed
        # PostgreSQL source would reconnect and leave that connection open).
        path = tuple(tree.inclusion_proof(args.index, size))
    finally:
        source.close()
    proof = TlogProof(index=args.index, proof=path, checkpoint_note=note)
    sys.stdout.write(proof.marshal())
    return 0


def _related(source: _Source, index: int) -> list[int]:
    search = source.search
    hits = search(SearchQuery(after_index=index - 1, limit=1))
    if not hits or hits[0].index != index:
        raise NotFound(f"no entry {index} in the log")
    c = hits[0].columns
    related = {index}
    if c[0] == EntryKind.RESPONSE and c[11] >= 0:  # (-1: its request leg is in another shard)
        related.add(c[11])
    elif c[0] == EntryKind.REQUEST and c[1]:
        related |= {
            h.index
            for h in search(SearchQuery(request_id=c[1], limit=500))
            if h.columns[0] == EntryKind.RESPONSE and h.columns[11] == index
        }
    return sorted(related)


def _export(args: argparse.Namespace) -> int:
    source = _one_source(args)
    try:
        related = _related(source, args.index)
        tree, note, size = _tree_and_checkpoint(source, 0, max(related))
        entries = [(i, source.leaves(i, i + 1)[0]) for i in related]
        origin = source.origin
        # The proofs read tiles through ``source``: build the bundle before closing it.
        bundle = build_bundle(
            origin=origin,
            index=args.index,
            entries=entries,
            checkpoint=note,
            tree_size=size,
            inclusion_proof=tree.inclusion_proof,
        )
    finally:
        source.close()
    args.out.write_bytes(bundle)
    print(
        f"wrote {args.out}: entries {', '.join(map(str, related))} of {origin}, proved "
        f"against the checkpoint of size {size}"
    )
    return 0


def _verify_bundle(args: argparse.Namespace) -> int:
    registry = Registry.load_dir(args.federation)
    try:
        data = args.bundle.read_bytes()
    except OSError as exc:
        raise NotFound(f"cannot read {args.bundle}: {exc.strerror or exc}") from exc
    try:
        report = verify_bundle(data, registry)
    except VerificationError as exc:
        print(f"FAILED: {exc.message}")
        print(f"fedgate audit verify-bundle: {exc.message}", file=sys.stderr)
        return 1
    print(f"evidence bundle for entry {report.index} of {report.origin}")
    print(f"  checkpoint  size {report.checkpoint.size}, root {report.checkpoint.root_hash.hex()}")
    print(f"  witnesses   {', '.join(report.witnesses) or 'none'}")
    for line in report.checks:
        print(f"  ✓ {line}")
    print("OK")
    return 0
