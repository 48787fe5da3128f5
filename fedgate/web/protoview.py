"""Show protobuf messages on console pages, and read a result message back from a form.

Driven by the message descriptors, so every action's request, and every result type, has a
view and (for the scalar parts of a result) a form without a page per type. Identifier fields
(account, ID and phone numbers) are masked unless the caller reveals them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, cast

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

from fedgate.errors import FieldViolation, InvalidArgument
from fedgate.web.i18n import field_label, translate
from fedgate.web.text import BEIJING, format_money, format_time, mask_identifier, mask_text
from fedgate.words import CODE_FIELDS, VALUE_WORDS

__all__ = [
    "IDENTIFIER_FIELDS",
    "MAX_FORM_ROWS",
    "FieldView",
    "FormField",
    "FormTable",
    "TableView",
    "ViewItem",
    "describe",
    "enum_name",
    "form_fields",
    "form_tables",
    "mask_tree",
    "parse_form",
    "subjects",
]

IDENTIFIER_FIELDS: Final = frozenset(
    {
        "account_number",
        "id_number",
        "phone",
        "phone_number",
        "payer_account",
        "counterparty_account",
        "counterparty",
        "sender",
        "subject",
    }
)
"""Fields holding account, resident ID or phone numbers: masked in lists and to non-claimants."""

_SKIPPED_TYPES: Final = frozenset({"fedgate.v1.PageRequest"})
_MONEY: Final = "fedgate.v1.Money"
_TIMESTAMP: Final = "google.protobuf.Timestamp"
_WINDOW: Final = "fedgate.v1.TimeWindow"
_MAX_MINOR: Final = 10**13
_EMPTY: Final = "—"


@dataclass(frozen=True, slots=True)
class FieldView:
    """One labelled value."""

    name: str
    label: str
    text: str
    identifier: bool = False


@dataclass(frozen=True, slots=True)
class TableView:
    """A repeated message field as a table."""

    name: str
    label: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


ViewItem = FieldView | TableView


@dataclass(frozen=True, slots=True)
class FormField:
    """One input of a manual-answer form. ``kind`` is text, integer, decimal, checkbox,
    datetime, select or money; ``name`` is the input name (``r.<field>``)."""

    name: str
    label: str
    kind: str
    value: str = ""
    currency: str = "CNY"
    choices: tuple[tuple[str, str], ...] = ()


def _fields(descriptor: Any) -> tuple[FieldDescriptor, ...]:
    """A descriptor's fields, typed (the upb and Python descriptor classes differ in stubs)."""
    return tuple(cast(FieldDescriptor, f) for f in descriptor.fields)


def _enum(field: FieldDescriptor) -> EnumDescriptor:
    enum = field.enum_type
    assert enum is not None
    return enum


def _enum_prefix(enum: EnumDescriptor) -> str:
    snake = "".join(f"_{c}" if c.isupper() else c for c in enum.name).lstrip("_").upper()
    return f"{snake}_"


def _enum_text(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    return value.name.removeprefix(_enum_prefix(enum)).lower()


def enum_name(enum: EnumDescriptor, number: int) -> str:
    """``FREEZE_METHOD_RECEIVE_ONLY`` → ``receive_only``: an enum value without its prefix."""
    return _enum_text(enum, number)


def _words(code: str, lang: str) -> str:
    """A code (``police_investigator``, ``in``) in the page's language, when it has words."""
    return translate(lang, f"value.{code}") if code in VALUE_WORDS else code


def _scalar_text(field: FieldDescriptor, value: Any, lang: str, reveal: bool) -> str:
    if field.type == FieldDescriptor.TYPE_BOOL:
        return translate(lang, "item.yes" if value else "item.no")
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _words(_enum_text(_enum(field), int(value)), lang)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes(value).hex()
    text = str(value)
    if not text:
        return _EMPTY
    if field.name in IDENTIFIER_FIELDS and not reveal:
        return mask_identifier(text)
    if field.name in CODE_FIELDS and text in VALUE_WORDS:
        return translate(lang, f"value.{text}")
    return text if reveal else mask_text(text)  # free text may hold identifiers too


def _message_text(message: Message, lang: str, reveal: bool) -> str:
    """A one-line text for the message types that have a natural one (money, time, window)."""
    name = message.DESCRIPTOR.full_name
    if name == _MONEY:
        return format_money(int(getattr(message, "minor_units")), str(getattr(message, "currency")))  # noqa: B009
    if name == _TIMESTAMP:
        return format_time(message.ToDatetime(tzinfo=BEIJING))  # type: ignore[attr-defined]
    if name == _WINDOW:
        start = getattr(message, "start")  # noqa: B009
        end = getattr(message, "end")  # noqa: B009
        return f"{_message_text(start, lang, reveal)} – {_message_text(end, lang, reveal)}"
    parts = [
        item.text for item in describe(message, lang, reveal=reveal) if isinstance(item, FieldView)
    ]
    return "；".join(p for p in parts if p != _EMPTY)


def _is_leaf(field: FieldDescriptor) -> bool:
    return field.message_type is None or field.message_type.full_name in (
        _MONEY,
        _TIMESTAMP,
        _WINDOW,
    )


def _is_repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def describe(
    message: Message, lang: str, *, reveal: bool, prefix: str = ""
) -> tuple[ViewItem, ...]:
    """Every set field of ``message`` as labelled text, repeated messages as tables; nested
    messages are flattened with ``parent · child`` labels. Identifiers masked unless
    ``reveal``."""
    items: list[ViewItem] = []
    for field in _fields(message.DESCRIPTOR):
        label = field_label(lang, field.name)
        full_label = f"{prefix}{label}"
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.full_name in _SKIPPED_TYPES:
            continue
        if _is_repeated(field):
            if field.message_type is None:
                texts = [_scalar_text(field, v, lang, reveal) for v in value]
                items.append(FieldView(field.name, full_label, "，".join(texts) or _EMPTY))
                continue
            columns = [
                f for f in _fields(field.message_type) if f.message_type is None or _is_leaf(f)
            ]
            rows = tuple(
                tuple(_cell(f, getattr(row, f.name), row, lang, reveal) for f in columns)
                for row in value
            )
            headers = tuple(field_label(lang, f.name) for f in columns)
            items.append(TableView(field.name, full_label, headers, rows))
            continue
        if field.message_type is not None:
            if not message.HasField(field.name):
                continue
            if _is_leaf(field):
                items.append(FieldView(field.name, full_label, _message_text(value, lang, reveal)))
            else:
                items.extend(describe(value, lang, reveal=reveal, prefix=f"{full_label} · "))
            continue
        identifier = field.name in IDENTIFIER_FIELDS
        items.append(
            FieldView(field.name, full_label, _scalar_text(field, value, lang, reveal), identifier)
        )
    return tuple(items)


def _cell(field: FieldDescriptor, value: Any, row: Message, lang: str, reveal: bool) -> str:
    if _is_repeated(field):
        return "，".join(str(v) for v in value)
    if field.message_type is not None:
        return _message_text(value, lang, reveal) if row.HasField(field.name) else _EMPTY
    return _scalar_text(field, value, lang, reveal)


def subjects(message: Message) -> tuple[tuple[str, str], ...]:
    """The identifier fields set on ``message`` (one level deep), as ``(field, value)``."""
    found: list[tuple[str, str]] = []
    for field in _fields(message.DESCRIPTOR):
        if field.name in IDENTIFIER_FIELDS and field.type == FieldDescriptor.TYPE_STRING:
            value = getattr(message, field.name)
            if value:
                found.append((field.name, str(value)))
    return tuple(found)


# -- manual answer forms -------------------------------------------------------------------------

_INTS: Final = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
    }
)
_FLOATS: Final = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT})


def _editable(field: FieldDescriptor) -> bool:
    if _is_repeated(field):
        return False
    if field.message_type is not None:
        return field.message_type.full_name in (_MONEY, _TIMESTAMP)
    return field.type != FieldDescriptor.TYPE_BYTES


_CODE_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "direction": ("in", "out"),
    "channel": ("mobile", "online", "atm", "counter", "pos", "third_party"),
    "kind": ("call", "sms"),
}
"""String fields of result rows whose values are codes: a select in forms, checked on reading."""

MAX_FORM_ROWS: Final = 200
"""Rows a staff member may enter in one table of a manual answer."""
_BLANK_ROWS: Final = 3


def _form_field(field: FieldDescriptor, prefill: Message | None, lang: str, name: str) -> FormField:
    label = field_label(lang, field.name)
    value: Any = getattr(prefill, field.name) if prefill is not None else None
    if field.message_type is not None and field.message_type.full_name == _MONEY:
        amount = ""
        currency = "CNY"
        if prefill is not None and prefill.HasField(field.name):
            minor = int(value.minor_units)
            amount = f"{minor // 100}.{minor % 100:02d}" if minor >= 0 else str(minor / 100)
            currency = str(value.currency) or "CNY"
        return FormField(name, label, "money", amount, currency)
    if field.message_type is not None:
        text = ""
        if prefill is not None and prefill.HasField(field.name):
            at: datetime = value.ToDatetime(tzinfo=BEIJING)
            text = at.strftime("%Y-%m-%dT%H:%M")
        return FormField(name, label, "datetime", text)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return FormField(name, label, "checkbox", "on" if value else "")
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = _enum(field)
        choices = tuple(
            (v.name, _words(_enum_text(enum, v.number), lang)) for v in enum.values if v.number != 0
        )
        current = enum.values_by_number[int(value)].name if value else ""
        return FormField(name, label, "select", current, choices=choices)
    if field.type == FieldDescriptor.TYPE_STRING and field.name in _CODE_CHOICES:
        codes = tuple((c, translate(lang, f"value.{c}")) for c in _CODE_CHOICES[field.name])
        return FormField(name, label, "select", str(value or ""), choices=codes)
    if field.type in _INTS:
        return FormField(name, label, "integer", str(value) if value else "")
    if field.type in _FLOATS:
        return FormField(name, label, "decimal", str(value) if value else "")
    return FormField(name, label, "text", str(value) if value else "")


def form_fields(
    descriptor: Descriptor, prefill: Message | None, lang: str
) -> tuple[FormField, ...]:
    """The inputs for the editable (scalar, money, time) fields of a result message, filled
    from ``prefill`` (the backend's answer) when there is one."""
    return tuple(
        _form_field(field, prefill, lang, f"r.{field.name}")
        for field in _fields(descriptor)
        if _editable(field)
    )


@dataclass(frozen=True, slots=True)
class FormTable:
    """A repeated message field of a result as rows of inputs: the backend's rows (to correct)
    and blank ones (to add). Input names are ``r.<field>.<row>.<column>``; ``count_name`` is a
    hidden input holding the number of rows."""

    name: str
    label: str
    headers: tuple[str, ...]
    rows: tuple[tuple[FormField, ...], ...]

    @property
    def count_name(self) -> str:
        return f"r.{self.name}.rows"


def _row_columns(field: FieldDescriptor) -> tuple[FieldDescriptor, ...]:
    assert field.message_type is not None
    return tuple(f for f in _fields(field.message_type) if _editable(f))


def form_tables(
    descriptor: Descriptor, prefill: Message | None, lang: str, *, blank: int = _BLANK_ROWS
) -> tuple[FormTable, ...]:
    """An editable table for each repeated message field of a result (transactions, call
    records, ...), filled from ``prefill`` and followed by ``blank`` empty rows."""
    tables: list[FormTable] = []
    for field in _fields(descriptor):
        if not (_is_repeated(field) and field.message_type is not None):
            continue
        columns = _row_columns(field)
        existing: list[Message | None] = list(getattr(prefill, field.name)) if prefill else []
        rows = tuple(
            tuple(_form_field(c, item, lang, f"r.{field.name}.{i}.{c.name}") for c in columns)
            for i, item in enumerate([*existing, *([None] * blank)][:MAX_FORM_ROWS])
        )
        headers = tuple(field_label(lang, c.name) for c in columns)
        tables.append(FormTable(field.name, field_label(lang, field.name), headers, rows))
    return tuple(tables)


def parse_form(message: Message, get: Callable[[str], str], *, now: datetime | None = None) -> None:
    """Fill ``message`` (an empty result) from form values ``get(name)``: its editable fields
    and the rows of its tables (blank rows are skipped). A row is checked as the reference
    backends' rows are made: its time, direction and amount are present, codes are from their
    lists, times are not in the future (``now``). Raises ``InvalidArgument`` naming every field
    that cannot be read (``transactions[2].amount`` for a row's)."""
    violations: list[FieldViolation] = []
    for field in _fields(message.DESCRIPTOR):
        if _is_repeated(field) and field.message_type is not None:
            violations += _parse_rows(message, field, get, now)
            continue
        if not _editable(field):
            continue
        violations += _read(message, field, "r.", field.name, get)
    if violations:
        raise InvalidArgument.for_fields(violations)


_ROW_REQUIRED: Final = frozenset({"time", "direction", "amount", "kind", "counterparty"})
_CLOCK_SKEW: Final = 300


def _read(
    message: Message, field: FieldDescriptor, prefix: str, path: str, get: Callable[[str], str]
) -> list[FieldViolation]:
    raw = get(f"{prefix}{field.name}").strip()
    try:
        _set(message, field, raw, lambda name: get(prefix + name.removeprefix("r.")))
    except _Unreadable as exc:
        return [FieldViolation(path, str(exc))]
    except (ValueError, InvalidOperation, OverflowError, TypeError):
        return [FieldViolation(path, f"cannot read {raw[:40]!r}")]
    return []


def _parse_rows(
    message: Message, field: FieldDescriptor, get: Callable[[str], str], now: datetime | None
) -> list[FieldViolation]:
    count_text = get(f"r.{field.name}.rows").strip()
    if not count_text:
        return []
    if not count_text.isdigit() or int(count_text) > MAX_FORM_ROWS:
        return [FieldViolation(field.name, f"at most {MAX_FORM_ROWS} rows")]
    columns = _row_columns(field)
    violations: list[FieldViolation] = []
    rows = getattr(message, field.name)
    for i in range(int(count_text)):
        prefix = f"r.{field.name}.{i}."
        if not any(get(prefix + c.name).strip() for c in columns):
            continue  # a blank row
        row = rows.add()
        where = f"{field.name}[{i + 1}]"
        for column in columns:
            path = f"{where}.{column.name}"
            found = _read(row, column, prefix, path, get)
            if found:
                violations += found
                continue
            raw = get(prefix + column.name).strip()
            if column.name in _ROW_REQUIRED and not raw:
                violations.append(FieldViolation(path, "required in every row"))
            elif column.name in _CODE_CHOICES and raw and raw not in _CODE_CHOICES[column.name]:
                violations.append(
                    FieldViolation(path, f"one of {', '.join(_CODE_CHOICES[column.name])}")
                )
            elif (
                now is not None
                and column.message_type is not None
                and column.message_type.full_name == _TIMESTAMP
                and raw
                and getattr(row, column.name).seconds > now.timestamp() + _CLOCK_SKEW
            ):
                violations.append(FieldViolation(path, "must not be in the future"))
    return violations


class _Unreadable(ValueError):
    """A form value that does not fit its field; the message says what to enter."""


def _set(message: Message, field: FieldDescriptor, raw: str, get: Callable[[str], str]) -> None:
    name = field.name
    if field.message_type is not None and field.message_type.full_name == _MONEY:
        if not raw:
            return
        try:
            minor = Decimal(raw) * 100
        except InvalidOperation as exc:
            raise _Unreadable("give an amount in yuan, e.g. 1234.56") from exc
        if not minor.is_finite() or minor != minor.to_integral_value():
            raise _Unreadable("give an amount in yuan with at most 2 decimals")
        if not 0 <= minor <= _MAX_MINOR:
            raise _Unreadable("the amount is out of range")
        currency = get(f"r.{name}.currency").strip().upper() or "CNY"
        if len(currency) != 3 or not currency.isalpha():
            raise _Unreadable("the currency is a 3-letter ISO 4217 code")
        money = getattr(message, name)
        money.currency = currency
        money.minor_units = int(minor)
        return
    if field.message_type is not None:
        if not raw:
            return
        try:
            at = datetime.strptime(raw, "%Y-%m-%dT%H:%M").replace(tzinfo=BEIJING)
        except ValueError as exc:
            raise _Unreadable("give a date and time, e.g. 2026-11-22T14:03") from exc
        getattr(message, name).FromDatetime(at)
        return
    if field.type == FieldDescriptor.TYPE_BOOL:
        setattr(message, name, raw == "on")
    elif field.type == FieldDescriptor.TYPE_ENUM:
        if raw:
            value = _enum(field).values_by_name.get(raw)
            if value is None:
                raise _Unreadable("choose one of the listed values")
            setattr(message, name, value.number)
    elif field.type in _INTS:
        if raw:
            if not raw.lstrip("-").isdigit():
                raise _Unreadable("give a whole number")
            setattr(message, name, int(raw))
    elif field.type in _FLOATS:
        if raw:
            setattr(message, name, float(raw))
    elif len(raw) > 500:
        raise _Unreadable("at most 500 characters")
    else:
        setattr(message, name, raw)


_NAME_FIELDS: Final = frozenset({"name", "holder_name", "account_name", "owner_name"})


def mask_tree(value: Any, key: str = "") -> Any:
    """``value`` (JSON-like) with identifier and name fields masked and every string's
    identifiers masked."""
    if isinstance(value, dict):
        return {k: mask_tree(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_tree(v, key) for v in value]
    if isinstance(value, str):
        if key in IDENTIFIER_FIELDS or key in _NAME_FIELDS:
            return mask_identifier(value) if value else value
        return mask_text(value)
    return value
