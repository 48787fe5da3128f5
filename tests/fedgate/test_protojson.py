"""Every ``--json`` time is ISO 8601 in China Standard Time with its offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf.timestamp_pb2 import Timestamp

from fedgate.protojson import iso_time, message_dict
from fedgate.testing import json_times, valid_request
from fedgate.v1 import bank_pb2, request_pb2

NOW = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


def _ts(at: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at)
    return ts


def test_iso_time_is_the_same_instant_in_china_time() -> None:
    assert iso_time(NOW) == "2026-11-27T10:00:00+08:00"
    assert iso_time(_ts(NOW)) == "2026-11-27T10:00:00+08:00"
    assert iso_time(NOW.replace(tzinfo=None)) == "2026-11-27T10:00:00+08:00"  # naive is UTC
    assert iso_time(NOW + timedelta(microseconds=250)) == "2026-11-27T10:00:00.000250+08:00"
    later = datetime.fromisoformat(iso_time(NOW.astimezone(timezone(timedelta(hours=-5)))))
    assert later == NOW


def test_nested_and_repeated_timestamps_are_converted() -> None:
    request = valid_request("transactions", now=NOW)
    doc = message_dict(request)
    assert doc["issued_at"] == "2026-11-27T10:00:00+08:00"
    window = doc["transactions"]["window"]
    assert window["start"].endswith("+08:00")
    assert window["end"].endswith("+08:00")
    result = bank_pb2.TransactionsResult()
    for minutes in (1, 2):
        row = result.transactions.add()
        row.time.CopyFrom(_ts(NOW + timedelta(minutes=minutes)))
    rows = message_dict(request_pb2.Response(transactions=result))["transactions"]["transactions"]
    assert [r["time"] for r in rows] == ["2026-11-27T10:01:00+08:00", "2026-11-27T10:02:00+08:00"]


def test_no_time_left_in_utc() -> None:
    for action in ("freeze", "stop_payment", "call_records", "subscriber"):
        doc = message_dict(valid_request(action, now=NOW), with_defaults=True)
        times = json_times(doc)
        assert times, action
        assert all(t.endswith("+08:00") for t in times), (action, times)


def test_unset_timestamps_stay_absent() -> None:
    doc = message_dict(request_pb2.Request(request_id="r-1"))
    assert "issued_at" not in doc
