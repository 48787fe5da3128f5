"""The one configuration rule of every fedgate process: a TOML file read into frozen dataclasses.

- **Defaults** live in one place: the dataclass fields. :func:`build` passes only the options a
  file or the environment sets, so the dataclass supplies every other value; an option is added
  by adding a field (its annotation says how it is read).
- **Environment**: ``<PREFIX><SECTION>__<KEY>`` (or ``<PREFIX><KEY>`` for a top-level key)
  replaces one value; the text is read as a TOML value when it parses as one (``5``, ``true``,
  ``["a", "b"]``, ``{ "bank.icbc" = "..." }``) and as a plain string otherwise. The gateway's
  prefix is ``FEDGATE_GATEWAY__``, a node's ``FEDGATE_NODE__``.
- **Paths** are relative to the config file's folder.
- **Mistakes** raise :class:`~fedgate.errors.ConfigError` naming the option (``server.listen``),
  including unknown options, so a typo never silently falls back to a default.
- **Writing**: :func:`dump_toml` is the one TOML writer (``tomli-w``), for the files ``fedgate
  up`` and the benchmarks generate.

Stdlib only for reading (``tomllib``), so the SDK carries no extra dependency.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from fedgate.errors import ConfigError

__all__ = ["ConfigError", "build", "dump_toml", "read_toml", "with_env"]

T = TypeVar("T")


def read_toml(path: Path, *, what: str) -> dict[str, Any]:
    """The parsed TOML file ``path``; ``ConfigError`` naming ``what`` (e.g. "the gateway
    config") if it cannot be read or parsed."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc


def with_env(doc: Mapping[str, Any], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """``doc`` with every ``<prefix>…`` variable of ``env`` applied (see the module docstring).
    Names are case-insensitive after the prefix; ``ConfigError`` names a malformed variable."""
    merged: dict[str, Any] = _copy(doc)
    for name, raw in sorted(env.items()):
        if not name.startswith(prefix):
            continue
        parts = [p.lower() for p in name[len(prefix) :].split("__")]
        if not all(parts):
            raise ConfigError(f"{name}: expected {prefix}<SECTION>__<KEY> or {prefix}<KEY>")
        table = merged
        for depth, key in enumerate(parts[:-1]):
            nested = table.setdefault(key, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"{name}: {'.'.join(parts[: depth + 1])} is not a table")
            table = nested
        table[parts[-1]] = _env_value(raw)
    return merged


def _copy(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in doc.items()}


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def build(
    cls: type[T],
    table: Any,
    *,
    where: str = "",
    base: Path,
    ignore: frozenset[str] = frozenset(),
) -> T:
    """An instance of the dataclass ``cls`` from the TOML table ``table``: each field is read
    under its own name and converted by its annotation (``str``, ``int``, ``float``, ``bool``,
    ``Path``, ``X | None``, ``tuple[str, ...]``, ``Mapping[str, str]``, ``Mapping[str, Any]``,
    or a nested dataclass, read from the sub-table of that name). Fields the table does not set
    keep the dataclass's default; a field without one is required. Keys in ``ignore`` are left
    for the caller. Raises ``ConfigError`` naming the option (``where.key``)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(table) - set(fields) - ignore
    if unknown:
        if not where:
            raise ConfigError(
                f"unknown config section(s) or option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(fields))}"
            )
        raise ConfigError(f"unknown option(s) {', '.join(f'{where}.{k}' for k in sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        option = f"{where}.{name}" if where else name
        hint = hints[name]
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        if name not in table:
            if dataclasses.is_dataclass(hint) and not has_default:
                kwargs[name] = build(hint, {}, where=option, base=base)  # type: ignore[arg-type]
            elif not has_default:
                raise ConfigError(f"{option} is required")
            continue
        kwargs[name] = _convert(table[name], hint, option, base)
    return cls(**kwargs)


def _convert(value: Any, hint: Any, option: str, base: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        choices = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(choices) != 1:
            raise TypeError(f"{option}: unsupported annotation {hint}")
        if choices[0] is Path and value == "":
            return None
        return _convert(value, choices[0], option, base)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where=option, base=base)  # type: ignore[arg-type]
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{option} must be a string, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{option} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{option} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{option} must be a number, got {value!r}")
        return float(value)
    if hint is Path:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{option} must be a path (a non-empty string), got {value!r}")
        path = Path(value.strip()).expanduser()
        return (path if path.is_absolute() else base / path).resolve()
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{option} must be a list of non-empty strings, got {value!r}")
        return tuple(value)
    if origin in (Mapping, typing.Mapping, dict):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{option} must be a table, got {value!r}")
        if typing.get_args(hint)[1] is str and not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{option} must be a table of strings")
        return MappingProxyType(dict(value))
    raise TypeError(f"{option}: unsupported annotation {hint}")


def dump_toml(doc: Mapping[str, Any], *, header: str = "") -> str:
    """``doc`` as TOML text (``None`` values left out; paths, tuples and read-only mappings
    written as strings, arrays and tables), after ``header`` as ``#`` comment lines."""
    import tomli_w  # only the processes that write configs need it (not the SDK)

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + tomli_w.dumps(_plain(doc))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
