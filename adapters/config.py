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

Environment overrides (``FEDGATE_NODE_`` prefix): ``MEMBER``, ``FEDERATION``, ``STATE``,
``LISTEN``, ``STAFF`` (comma-separated), ``GATEWAY_ENDPOINT``, ``BACKEND_KIND``,
``BACKEND_PATH``, ``DEFAULT_MODE``, ``MODE_<ACTION>`` (e.g. ``FEDGATE_NODE_MODE_TRANSACTIONS=
manual``), ``QUEUE_DEADLINE_MINUTES``, ``QUEUE_REMINDER_MINUTES``, ``MONITOR_POLL_SECONDS``.

Staff accounts are identified by the id in the ``x-fedgate-staff`` metadata of a call made with
the agency's own member certificate; the web console (a later issue) adds per-staff passwords.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from fedgate.actions import ACTIONS
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

ENV_PREFIX = "FEDGATE_NODE_"
DEFAULT_QUEUE_DEADLINE = timedelta(hours=24)
DEFAULT_REMINDER = timedelta(minutes=15)
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
    backend_kind: str = "reference"
    backend_path: Path | None = None
    default_mode: ActionMode = ActionMode.AUTOMATIC
    modes: Mapping[str, ActionMode] = field(default_factory=dict)
    queue_deadline: timedelta = DEFAULT_QUEUE_DEADLINE
    reminder: timedelta = DEFAULT_REMINDER
    monitor_poll_s: float = 2.0

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
        if self.backend_kind != "reference":
            raise InvalidArgument(
                f"backend.kind {self.backend_kind!r}: only 'reference' is built in"
            )

    def mode_of(self, action: str) -> ActionMode:
        """Whether ``action`` is answered automatically or by staff."""
        return self.modes.get(action, self.default_mode)

    def to_toml(self) -> str:
        """The configuration as a TOML file that ``load_config`` reads back (absolute paths)."""
        lines = [
            f"member = {_q(self.member_id)}",
            f"federation = {_q(str(self.federation_dir))}",
            f"state = {_q(str(self.state_dir))}",
            f"staff = [{', '.join(_q(s) for s in self.staff)}]",
        ]
        if self.listen is not None:
            lines.append(f"listen = {_q(self.listen)}")
        if self.gateway_endpoint is not None:
            lines.append(f"gateway_endpoint = {_q(self.gateway_endpoint)}")
        lines += ["", "[backend]", f"kind = {_q(self.backend_kind)}"]
        if self.backend_path is not None:
            lines.append(f"path = {_q(str(self.backend_path))}")
        lines += ["", "[actions]", f"default = {_q(self.default_mode.value)}"]
        lines += [f"{action} = {_q(mode.value)}" for action, mode in sorted(self.modes.items())]
        lines += [
            "",
            "[queue]",
            f"deadline_minutes = {self.queue_deadline.total_seconds() / 60!r}",
            f"reminder_minutes = {self.reminder.total_seconds() / 60!r}",
            "",
            "[monitor]",
            f"poll_seconds = {self.monitor_poll_s!r}",
            "",
        ]
        return "\n".join(lines)


def _q(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def load_config(path: Path | None, *, env: Mapping[str, str] | None = None) -> NodeConfig:
    """Read ``path`` (optional when the environment gives everything) and apply overrides.

    Raises ``InvalidArgument`` naming the option when a value is missing or malformed.
    """
    env = os.environ if env is None else env
    doc: dict[str, Any] = {}
    base = Path.cwd()
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise InvalidArgument(f"cannot read the node configuration {path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise InvalidArgument(f"{path} is not valid TOML: {exc}") from exc
        base = Path(path).resolve().parent
    backend = _table(doc, "backend")
    actions = dict(_table(doc, "actions"))
    queue = _table(doc, "queue")
    monitor = _table(doc, "monitor")

    def pick(env_key: str, value: object) -> object:
        return env.get(ENV_PREFIX + env_key, value)

    member = _text(pick("MEMBER", doc.get("member")), "member")
    federation = _path(pick("FEDERATION", doc.get("federation")), "federation", base)
    state = _path(pick("STATE", doc.get("state")), "state", base)
    listen = pick("LISTEN", doc.get("listen"))
    gateway_endpoint = pick("GATEWAY_ENDPOINT", doc.get("gateway_endpoint"))
    staff_value = pick("STAFF", doc.get("staff", []))
    if isinstance(staff_value, str):
        staff_value = [s.strip() for s in staff_value.split(",") if s.strip()]
    if not isinstance(staff_value, list) or not all(isinstance(s, str) for s in staff_value):
        raise InvalidArgument("staff must be a list of staff ids")
    backend_path = pick("BACKEND_PATH", backend.get("path"))
    default_mode = _mode(pick("DEFAULT_MODE", actions.pop("default", "automatic")), "default")
    modes = {name: _mode(value, name) for name, value in actions.items()}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX + "MODE_"):
            name = key.removeprefix(ENV_PREFIX + "MODE_").lower()
            modes[name] = _mode(value, name)
    return NodeConfig(
        member_id=check_member_id(member),
        federation_dir=federation,
        state_dir=state,
        listen=None if listen is None else _text(listen, "listen"),
        staff=tuple(staff_value),
        gateway_endpoint=(
            None if gateway_endpoint is None else _text(gateway_endpoint, "gateway_endpoint")
        ),
        backend_kind=_text(pick("BACKEND_KIND", backend.get("kind", "reference")), "backend.kind"),
        backend_path=None if backend_path is None else _path(backend_path, "backend.path", base),
        default_mode=default_mode,
        modes=modes,
        queue_deadline=timedelta(
            minutes=_number(
                pick("QUEUE_DEADLINE_MINUTES", queue.get("deadline_minutes", 1440)),
                "queue.deadline_minutes",
            )
        ),
        reminder=timedelta(
            minutes=_number(
                pick("QUEUE_REMINDER_MINUTES", queue.get("reminder_minutes", 15)),
                "queue.reminder_minutes",
            )
        ),
        monitor_poll_s=_number(
            pick("MONITOR_POLL_SECONDS", monitor.get("poll_seconds", 2.0)), "monitor.poll_seconds"
        ),
    )


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise InvalidArgument(f"[{name}] must be a table")
    return value


def _text(value: object, option: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"{option} is required (a non-empty string)")
    return value.strip()


def _path(value: object, option: str, base: Path) -> Path:
    path = Path(_text(value, option)).expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def _number(value: object, option: str) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{option} must be a number, got {value!r}") from exc


def _mode(value: object, action: str) -> ActionMode:
    try:
        return ActionMode(str(value).lower())
    except ValueError as exc:
        raise InvalidArgument(
            f"[actions] {action} = {value!r}: use 'automatic' or 'manual'"
        ) from exc
