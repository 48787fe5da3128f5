"""Messages and times as the JSON every ``--json`` prints: one rule for the whole CLI.

The protobuf JSON mapping writes a ``Timestamp`` as UTC (``2026-11-27T02:00:00Z``). A person
reading ``--json`` output, or a script comparing it with the text tables, would then see two
time zones for one moment. Every JSON time fedgate prints is therefore ISO 8601 in China
Standard Time with its offset (``2026-11-27T10:00:00+08:00``): the same instant, the zone the
tables use, and still parsed by any ISO 8601 reader.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from fedgate.types import CHINA_TIME

__all__ = ["iso_time", "message_dict"]

_TIMESTAMP = Timestamp.DESCRIPTOR.full_name
_WELL_KNOWN = "google.protobuf."


def iso_time(moment: datetime | Timestamp) -> str:
    """``moment`` as ISO 8601 in China Standard Time with its offset; seconds, or microseconds
    when the moment has them. A naive datetime is taken to be UTC (how the code keeps them)."""
    if isinstance(moment, Timestamp):
        moment = moment.ToDatetime(tzinfo=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(CHINA_TIME).isoformat()


def message_dict(message: Message, *, with_defaults: bool = False) -> dict[str, Any]:
    """``message`` in the protobuf JSON mapping with proto field names, its timestamps in China
    time (``with_defaults``: fields at their default values are printed too)."""
    doc: dict[str, Any] = json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=with_defaults,
    )
    _china_times(message, doc)
    return doc


def _china_times(message: Message, doc: dict[str, Any]) -> None:
    for fd in message.DESCRIPTOR.fields:
        if fd.type != FieldDescriptor.TYPE_MESSAGE or fd.name not in doc:
            continue
        value = getattr(message, fd.name)
        if fd.is_repeated:  # (fedgate's protos declare no maps)
            for position, item in enumerate(value):
                _convert(item, doc[fd.name], position)
        else:
            _convert(value, doc, fd.name)


def _convert(value: Message, holder: Any, key: Any) -> None:
    kind = value.DESCRIPTOR.full_name
    if kind == _TIMESTAMP:
        holder[key] = iso_time(value)  # type: ignore[arg-type]
    elif not kind.startswith(_WELL_KNOWN):
        _china_times(value, holder[key])
