"""Configuration of one agency node: a TOML file, every value overridable by environment.

A node's file looks like this (paths relative to the file's directory)::

    member = "bank.icbc"                 # the member this node speaks for
    federation = "../fed"                # federation directory (registry, credentials)
    state = "state/bank.icbc"            # the node's own durable state (answers, queue)
    listen = "127.0.0.1:20054"           # default: the member's endpoint in the registry
    staff = ["icbc.zhang", "icbc.li"]    # stationed staff allowed on StaffService
    gateway_endpoint = "127.0.0.1:20051" # default: the gateway's endpoint in the registry

    [backend]
    kind = "reference"                   # the reference SQLite backend of the member's kind
    path = "data/bank.icbc.sqlite"

    [actions]                            # per action: "automatic" (backend) or "manual" (staff)
    default = "automatic"
    transactions = "manual"

    [queue]
    deadline_minutes = 1440              # manual answers are due after 24 h by default
    reminder_minutes = 15                # staff are reminded this long before a deadline

    [monitor]
    poll_seconds = 2.0                   # how often monitored accounts are checked

    [risklist]                           # the shared risk list (docs/countermeasures.md)
    follow = true                        # keep a verified replica (state/risklist.sqlite)
    origin = "fedgate.example/gateway/shard-0/risklist"   # the list log's origin
    min_cosignatures = 0                 # witness cosignatures a checkpoint must carry
    warn = "police.gd.afc"               # the police member early warnings go to
    warning_window_minutes = 1440        # at most one warning per person in this window
    feed_per_second = 0                  # carrier: calls/SMS per second from the world (0: off)
    feed_max = 0                         # carrier: stop after this many events (bounded)

Read by the one rule of ``fedgate.config``: ``FEDGATE_NODE__<KEY>`` or
``FEDGATE_NODE__<SECTION>__<KEY>`` replaces one value, read as a TOML value when it parses as
one: ``FEDGATE_NODE__LISTEN=127.0.0.1:6000``, ``FEDGATE_NODE__STAFF='["icbc.wu"]'``,
``FEDGATE_NODE__ACTIONS__TRANSACTIONS=manual``, ``FEDGATE_NODE__QUEUE__DEADLINE_MINUTES=30``.
Unknown options are refused by name.

Staff accounts are identified by the id in the ``x-fedgate-staff`` metadata of a call made with
the agency's own member certificate; the web console (a later issue) adds per-staff passwords.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path

from fedgate.actions import ACTIONS
from fedgate.chase import CHASE_ACTIONS
from fedgate.config import ConfigError, build, dump_toml, read_toml, with_env
from fedgate.errors import InvalidArgument
from fedgate.federation import check_member_id
from fedgate.types import MemberId

__all__ = [
    "DEFAULT_QUEUE_DEADLINE",
    "DEFAULT_REMINDER",
    "ENV_PREFIX",
    "ActionMode",
    "NodeConfig",
    "load_config",
]

ENV_PREFIX = "FEDGATE_NODE__"
DEFAULT_QUEUE_DEADLINE = timedelta(hours=24)
DEFAULT_REMINDER = timedelta(minutes=15)
_DEFAULT_BACKEND = "reference"
_DEFAULT_MONITOR_POLL_S = 2.0
_STAFF_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class ActionMode(StrEnum):
    """Who answers an action: the backend at once, or stationed staff by hand."""

    AUTOMATIC = "automatic"
    MANUAL = "manual"


def _check_staff_id(staff_id: str) -> str:
    if not 3 <= len(staff_id) <= 32 or not set(staff_id) <= _STAFF_ID_CHARS:
        raise InvalidArgument(
            f"staff id {staff_id!r}: use 3 to 32 characters of letters, digits, '.', '_', '-'"
        )
    return staff_id


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Everything a node needs; checked at construction (messages name the option)."""

    member_id: MemberId
    federation_dir: Path
    state_dir: Path
    listen: str | None = None
    staff: tuple[str, ...] = ()
    gateway_endpoint: str | None = None
    backend_kind: str = _DEFAULT_BACKEND
    backend_path: Path | None = None
    default_mode: ActionMode = ActionMode.AUTOMATIC
    modes: Mapping[str, ActionMode] = field(default_factory=dict)
    chase_mode: ActionMode = ActionMode.AUTOMATIC
    """Who answers an emergency request of a chase (``chase_id`` set, urgency EMERGENCY, one
    of the chase's actions, ``CHASE_ACTIONS``): automatic by default, whatever the action's own
    mode, because the chase is the emergency stop-payment workflow (紧急止付) that banks answer
    by machine; ``[actions] chase``. Other actions keep their own mode even in a chase, so a
    workflow link never takes a query past the staff who must answer it."""
    queue_deadline: timedelta = DEFAULT_QUEUE_DEADLINE
    reminder: timedelta = DEFAULT_REMINDER
    monitor_poll_s: float = _DEFAULT_MONITOR_POLL_S
    otlp_endpoint: str = ""
    """``[telemetry] otlp_endpoint``: an OTLP/gRPC collector for the node's spans; empty: off."""
    prometheus_listen: str = ""
    """``[telemetry] prometheus_listen``: loopback ``host:port`` serving /metrics; empty: off."""
    risklist_follow: bool = False
    risklist_origin: str = ""
    risklist_min_cosignatures: int = 0
    warn_police: str = "police.gd.afc"
    warning_window: timedelta = timedelta(hours=24)
    feed_per_s: float = 0.0
    feed_max: int = 0

    def __post_init__(self) -> None:
        check_member_id(self.member_id)
        for staff_id in self.staff:
            _check_staff_id(staff_id)
        unknown = sorted(set(self.modes) - ACTIONS)
        if unknown:
            raise InvalidArgument(f"[actions]: unknown action(s) {', '.join(unknown)}")
        if self.queue_deadline <= timedelta(0):
            raise InvalidArgument("queue.deadline_minutes must be positive")
        if not timedelta(0) <= self.reminder < self.queue_deadline:
            raise InvalidArgument(
                "queue.reminder_minutes must be at least 0 and below the deadline"
            )
        if self.monitor_poll_s <= 0:
            raise InvalidArgument("monitor.poll_seconds must be positive")
        if self.prometheus_listen and not self.prometheus_listen.startswith(
            ("127.", "localhost:", "[::1]:")
        ):
            raise InvalidArgument(
                "telemetry.prometheus_listen must be a loopback address (metrics are not "
                f"authenticated), got {self.prometheus_listen!r}"
            )
        if self.risklist_follow and not self.risklist_origin:
            raise InvalidArgument("risklist.origin is required when risklist.follow is true")
        check_member_id(self.warn_police)
        if self.warning_window <= timedelta(0):
            raise InvalidArgument("risklist.warning_window_minutes must be positive")
        if self.feed_per_s < 0 or self.feed_max < 0 or self.risklist_min_cosignatures < 0:
            raise InvalidArgument(
                "risklist.feed_per_second, feed_max and min_cosignatures must not be negative"
            )
        if self.backend_kind != "reference":
            raise InvalidArgument(
                f"backend.kind {self.backend_kind!r}: only 'reference' is built in"
            )

    def mode_of(self, action: str, *, chase: bool = False) -> ActionMode:
        """Whether ``action`` is answered automatically or by staff (``chase``: the request is
        an emergency request of a chase, see ``chase_mode``)."""
        if chase and action in CHASE_ACTIONS:
            return self.chase_mode
        return self.modes.get(action, self.default_mode)

    def to_toml(self) -> str:
        """The configuration as a TOML file that ``load_config`` reads back (absolute paths)."""
        return dump_toml(
            {
                "member": self.member_id,
                "federation": self.federation_dir,
                "state": self.state_dir,
                "listen": self.listen,
                "staff": self.staff,
                "gateway_endpoint": self.gateway_endpoint,
                "backend": {"kind": self.backend_kind, "path": self.backend_path},
                "actions": {
                    "default": self.default_mode.value,
                    "chase": self.chase_mode.value,
                    **{action: mode.value for action, mode in sorted(self.modes.items())},
                },
                "queue": {
                    "deadline_minutes": self.queue_deadline / timedelta(minutes=1),
                    "reminder_minutes": self.reminder / timedelta(minutes=1),
                },
                "monitor": {"poll_seconds": self.monitor_poll_s},
                "risklist": {
                    "follow": self.risklist_follow,
                    "origin": self.risklist_origin,
                    "min_cosignatures": self.risklist_min_cosignatures,
                    "warn": self.warn_police,
                    "warning_window_minutes": self.warning_window / timedelta(minutes=1),
                    "feed_per_second": self.feed_per_s,
                    "feed_max": self.feed_max,
                },
                "telemetry": {
                    "otlp_endpoint": self.otlp_endpoint,
                    "prometheus_listen": self.prometheus_listen,
                },
            }
        )


# The file's shape (``fedgate.config`` reads it); its defaults are ``NodeConfig``'s constants.


@dataclass(frozen=True, slots=True, kw_only=True)
class _Backend:
    kind: str = _DEFAULT_BACKEND
    path: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class _Queue:
    deadline_minutes: float = DEFAULT_QUEUE_DEADLINE / timedelta(minutes=1)
    reminder_minutes: float = DEFAULT_REMINDER / timedelta(minutes=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Monitor:
    poll_seconds: float = _DEFAULT_MONITOR_POLL_S


@dataclass(frozen=True, slots=True, kw_only=True)
class _RiskList:
    follow: bool = False
    origin: str = ""
    min_cosignatures: int = 0
    warn: str = "police.gd.afc"
    warning_window_minutes: float = 1440.0
    feed_per_second: float = 0.0
    feed_max: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class _Telemetry:
    otlp_endpoint: str = ""
    prometheus_listen: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class _NodeFile:
    member: str
    federation: Path
    state: Path
    listen: str | None = None
    staff: tuple[str, ...] = ()
    gateway_endpoint: str | None = None
    backend: _Backend = field(default_factory=_Backend)
    actions: Mapping[str, str] = field(default_factory=dict)
    queue: _Queue = field(default_factory=_Queue)
    monitor: _Monitor = field(default_factory=_Monitor)
    telemetry: _Telemetry = field(default_factory=_Telemetry)
    risklist: _RiskList = field(default_factory=_RiskList)


def load_config(path: Path | None, *, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read ``path`` (optional when the environment gives everything) and apply overrides.

    Raises ``ConfigError`` (an ``InvalidArgument``) naming the option when a value is missing
    or malformed.
    """
    doc = {} if path is None else read_toml(path, what="the node configuration")
    base = Path.cwd() if path is None else Path(path).resolve().parent
    merged = with_env(doc, os.environ if env is None else env, ENV_PREFIX)
    f = build(_NodeFile, merged, base=base)
    actions = dict(f.actions)
    default_mode = _mode(actions.pop("default", ActionMode.AUTOMATIC), "default")
    if not f.member.strip():
        raise ConfigError("member is required (a non-empty string)")
    chase_mode = _mode(actions.pop("chase", ActionMode.AUTOMATIC), "chase")
    return NodeConfig(
        member_id=check_member_id(f.member.strip()),
        federation_dir=f.federation,
        state_dir=f.state,
        listen=f.listen,
        staff=f.staff,
        gateway_endpoint=f.gateway_endpoint,
        backend_kind=f.backend.kind,
        backend_path=f.backend.path,
        default_mode=default_mode,
        modes={name: _mode(value, name) for name, value in actions.items()},
        queue_deadline=timedelta(minutes=f.queue.deadline_minutes),
        reminder=timedelta(minutes=f.queue.reminder_minutes),
        monitor_poll_s=f.monitor.poll_seconds,
        otlp_endpoint=f.telemetry.otlp_endpoint,
        prometheus_listen=f.telemetry.prometheus_listen,
        chase_mode=chase_mode,
        risklist_follow=f.risklist.follow,
        risklist_origin=f.risklist.origin,
        risklist_min_cosignatures=f.risklist.min_cosignatures,
        warn_police=f.risklist.warn,
        warning_window=timedelta(minutes=f.risklist.warning_window_minutes),
        feed_per_s=f.risklist.feed_per_second,
        feed_max=f.risklist.feed_max,
    )


def _mode(value: object, action: str) -> ActionMode:
    try:
        return ActionMode(str(value).lower())
    except ValueError as exc:
        raise InvalidArgument(
            f"[actions] {action} = {value!r}: use 'automatic' or 'manual'"
        ) from exc
