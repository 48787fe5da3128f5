"""Audit entries: one canonical encoding, strict decoding, searchable columns."""

from __future__ import annotations

import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.audit_entry import (
    DECISIONS,
    ENTRY_MAGIC,
    RESPONSE_STATUSES,
    AuditEntry,
    EntryKind,
    EventEntry,
    RequestLeg,
    ResponseLeg,
    columns_of,
    decode_entry,
    encode_entry,
    entry_columns,
    entry_link,
    fields_of,
    index_columns,
    searchable,
    with_request,
    with_request_columns,
)
from fedgate.errors import InvalidArgument, VerificationError

AT = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)

REQUEST = RequestLeg(
    envelope=b"\x0a\x03abc\x12\x10key",
    peer="police.gd.afc",
    peer_cert_sha256="ab" * 32,
    received_at=AT,
    decision="allowed",
    rule="p, police_investigator, police, stop_payment, bank, allow",
    request_id="01937a5e-0000-7000-8000-000000000001",
    requesting_agency="police.gd.afc",
    officer_id="440100123",
    case_number="A44010020261100001",
    action="stop_payment",
    target_agency="bank.icbc",
    subjects=("6222021234567890128", "440106198805170012"),
)
RESPONSE = ResponseLeg(
    request_id=REQUEST.request_id,
    request_leaf_index=41,
    responder="bank.icbc",
    received_at=AT + timedelta(seconds=1),
    status="ok",
    response_hash=b"\x11" * 32,
    responder_signature=b"\x22" * 64,
    responder_key_id="00" * 16,
    detail="",
    response_envelope=b"\x0a\x01x",
)
EVENT = EventEntry(
    kind="identifier_reveal",
    actor="staff-007",
    member="bank.icbc",
    at=AT,
    detail=(("ticket", "T-1"), ("field", "身份证号")),
)

texts = st.text(max_size=30)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
requests = st.builds(
    RequestLeg,
    envelope=st.binary(max_size=200),
    peer=texts,
    peer_cert_sha256=st.sampled_from(["", "0f" * 32]),
    received_at=times,
    decision=st.sampled_from(sorted(DECISIONS)),
    rule=texts,
    request_id=texts,
    requesting_agency=texts,
    officer_id=texts,
    case_number=texts,
    action=texts,
    target_agency=texts,
    subjects=st.lists(texts, max_size=4).map(tuple),
)
responses = st.builds(
    ResponseLeg,
    request_id=texts,
    request_leaf_index=st.integers(0, 2**63 - 1),
    responder=texts,
    received_at=times,
    status=st.sampled_from(sorted(RESPONSE_STATUSES)),
    response_hash=st.sampled_from([b"", b"\x01" * 32]),
    responder_signature=st.sampled_from([b"", b"\x02" * 64]),
    responder_key_id=texts,
    detail=texts,
    response_envelope=st.binary(max_size=100),
)
events = st.builds(
    EventEntry,
    kind=texts,
    actor=texts,
    member=texts,
    at=times,
    detail=st.lists(st.tuples(texts, texts), max_size=4).map(tuple),
)
entries = st.one_of(requests, responses, events)
long_texts = st.text(min_size=100, max_size=300)
long_entries = st.one_of(
    requests.flatmap(
        lambda r: st.builds(
            replace,
            st.just(r),
            rule=long_texts,
            officer_id=long_texts,
            subjects=st.tuples(long_texts),
        )
    ),
    responses.flatmap(lambda r: st.builds(replace, st.just(r), detail=long_texts)),
)


class TestEncoding:
    @pytest.mark.parametrize(
        "entry", [REQUEST, RESPONSE, EVENT], ids=["request", "response", "event"]
    )
    def test_round_trip(self, entry: AuditEntry) -> None:
        data = encode_entry(entry)
        assert data.startswith(ENTRY_MAGIC + b"\x01")
        assert decode_entry(data) == entry
        assert encode_entry(decode_entry(data)) == data

    @given(entries)
    @settings(max_examples=300)
    def test_every_entry_round_trips_canonically(self, entry: AuditEntry) -> None:
        data = encode_entry(entry)
        assert decode_entry(data) == entry
        assert encode_entry(decode_entry(data)) == data

    def test_the_same_instant_in_another_zone_encodes_the_same(self) -> None:
        cst = timezone(timedelta(hours=8))
        other = RequestLeg(**{**_fields(REQUEST), "received_at": AT.astimezone(cst)})
        assert encode_entry(other) == encode_entry(REQUEST)

    def test_values_that_cannot_be_recorded_faithfully_are_refused(self) -> None:
        naive = AT.replace(tzinfo=None)
        with pytest.raises(InvalidArgument, match="timezone-aware"):
            encode_entry(RequestLeg(**{**_fields(REQUEST), "received_at": naive}))
        with pytest.raises(InvalidArgument, match="decision"):
            encode_entry(RequestLeg(**{**_fields(REQUEST), "decision": "maybe"}))
        with pytest.raises(InvalidArgument, match="status"):
            encode_entry(ResponseLeg(**{**_fields(RESPONSE), "status": "great"}))
        with pytest.raises(InvalidArgument, match="response_hash"):
            encode_entry(ResponseLeg(**{**_fields(RESPONSE), "response_hash": b"\x01"}))
        with pytest.raises(InvalidArgument, match="peer_cert_sha256"):
            encode_entry(RequestLeg(**{**_fields(REQUEST), "peer_cert_sha256": "AB" * 32}))
        with pytest.raises(InvalidArgument, match="Unicode"):
            encode_entry(EventEntry(**{**_fields(EVENT), "actor": "\ud800"}))


def _fields(entry: AuditEntry) -> dict[str, object]:
    return {name: getattr(entry, name) for name in entry.__slots__}  # type: ignore[union-attr]


class TestDecodingIsStrict:
    @pytest.mark.parametrize(
        "entry", [REQUEST, RESPONSE, EVENT], ids=["request", "response", "event"]
    )
    def test_every_truncation_and_extension_is_refused(self, entry: AuditEntry) -> None:
        data = encode_entry(entry)
        for cut in range(len(data)):
            with pytest.raises(VerificationError):
                decode_entry(data[:cut])
        with pytest.raises(VerificationError, match="trailing"):
            decode_entry(data + b"\x00")

    def test_header_version_and_kind_are_checked(self) -> None:
        data = encode_entry(EVENT)
        with pytest.raises(VerificationError, match="header"):
            decode_entry(b"x" + data[1:])
        with pytest.raises(VerificationError, match="version 2"):
            decode_entry(data[:16] + b"\x02" + data[17:])
        with pytest.raises(VerificationError, match="kind 9"):
            decode_entry(data[:17] + b"\x09" + data[18:])

    def test_field_contents_are_checked(self) -> None:
        data = encode_entry(REQUEST)
        with pytest.raises(VerificationError, match="decision"):
            decode_entry(data.replace(b"allowed", b"allowee"))
        with pytest.raises(VerificationError, match="UTF-8"):
            decode_entry(data.replace(b"police.gd.afc", b"police.gd.af\xff"))
        with pytest.raises(VerificationError, match="hex"):
            decode_entry(data.replace(b"ab" * 32, b"zz" * 32))
        raw = encode_entry(RESPONSE)
        with pytest.raises(VerificationError, match="status"):
            decode_entry(raw.replace(b"\x00\x00\x00\x02ok", b"\x00\x00\x00\x02no"))

    def test_a_length_prefix_past_the_end_is_refused(self) -> None:
        data = bytearray(encode_entry(EVENT))
        data[18:22] = struct.pack(">I", 1 << 30)
        with pytest.raises(VerificationError, match="past the end"):
            decode_entry(bytes(data))

    @given(st.binary(max_size=300))
    @settings(max_examples=300)
    def test_arbitrary_bytes_raise_only_verification_errors(self, data: bytes) -> None:
        try:
            entry = decode_entry(ENTRY_MAGIC + b"\x01" + data)
        except VerificationError:
            return
        assert encode_entry(entry) == ENTRY_MAGIC + b"\x01" + data

    @given(entries, st.data())
    @settings(max_examples=200)
    def test_every_bit_flip_is_refused_or_decodes_to_another_entry(
        self, entry: AuditEntry, data: st.DataObject
    ) -> None:
        raw = encode_entry(entry)
        bit = data.draw(st.integers(0, 8 * len(raw) - 1))
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            other = decode_entry(bytes(flipped))
        except VerificationError:
            return
        assert other != entry
        assert encode_entry(other) == bytes(flipped)


def _slow_link(data: bytes) -> tuple[int, str, int] | str:
    """What ``entry_link`` must answer, from ``decode_entry``: the link, or the error."""
    try:
        entry = decode_entry(data)
    except VerificationError as exc:
        return exc.message
    if isinstance(entry, RequestLeg):
        return int(EntryKind.REQUEST), entry.request_id, -1
    if isinstance(entry, ResponseLeg):
        return int(EntryKind.RESPONSE), entry.request_id, entry.request_leaf_index
    return int(EntryKind.EVENT), "", -1


def _fast_link(data: bytes) -> tuple[int, str, int] | str:
    try:
        return entry_link(data)
    except VerificationError as exc:
        return exc.message


class TestEntryLink:
    """``entry_link`` has an unrolled path for request and response legs: it must accept
    exactly what ``decode_entry`` accepts, and refuse with the same message."""

    @given(entries, st.data())
    @settings(max_examples=300)
    def test_agrees_with_decode_entry_after_any_edit(
        self, entry: AuditEntry, data: st.DataObject
    ) -> None:
        raw = bytearray(encode_entry(entry))
        assert _fast_link(bytes(raw)) == _slow_link(bytes(raw))
        for _ in range(data.draw(st.integers(1, 3))):
            at = data.draw(st.integers(0, len(raw) - 1))
            edit = data.draw(st.sampled_from(["set", "delete", "insert"]))
            byte = data.draw(st.sampled_from([0, 1, 0x80, 0xC3, 0xED, 0xFF, ord("a"), ord("G")]))
            if edit == "set":
                raw[at] = byte
            elif edit == "delete":
                del raw[at]
            else:
                raw.insert(at, byte)
        assert _fast_link(bytes(raw)) == _slow_link(bytes(raw))

    def test_field_contents_are_checked_on_the_fast_path(self) -> None:
        data = encode_entry(REQUEST)
        for bad in (
            data.replace(b"allowed", b"allowee"),
            data.replace(b"police.gd.afc", b"police.gd.af\xff"),
            data.replace(b"ab" * 32, b"zz" * 32),
            data.replace(b"A44010020261100001", b"A4401002026110000\xc3"),
            data + b"\x00",
            data[:-1],
        ):
            assert isinstance(_fast_link(bad), str)
            assert _fast_link(bad) == _slow_link(bad)
        raw = encode_entry(RESPONSE)
        for bad in (
            raw.replace(b"\x00\x00\x00\x02ok", b"\x00\x00\x00\x02no"),
            raw.replace(b"\x11" * 32, b"\x11" * 31 + b"\x00\x00\x00\x00"),
            raw.replace(b"bank.icbc", b"bank.icb\xed"),
        ):
            assert isinstance(_fast_link(bad), str)
            assert _fast_link(bad) == _slow_link(bad)

    @given(long_entries, st.data())
    @settings(max_examples=200)
    def test_agrees_with_decode_entry_when_lengths_are_not_ascii(
        self, entry: AuditEntry, data: st.DataObject
    ) -> None:
        """Fields of 128 bytes or more have a length prefix with a byte over 0x7f, inside the
        text run the fast path decodes at once: it must leave those to ``_parse``."""
        raw = bytearray(encode_entry(entry))
        assert _fast_link(bytes(raw)) == _slow_link(bytes(raw))
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.sampled_from([0x80, 0xA9, 0xBF, 0xC3, 0xE2]))
        assert _fast_link(bytes(raw)) == _slow_link(bytes(raw))

    @pytest.mark.parametrize("length", [0xC3, 0xE2, 0x80C3, 0xC300])
    def test_a_length_prefix_never_completes_a_character_of_the_next_field(
        self, length: int
    ) -> None:
        """A prefix ending in a UTF-8 lead byte (0xc3: 195 bytes) followed by a field that
        starts with a continuation byte decodes as one character when the two are read
        together; the field alone is not UTF-8 and the entry must be refused."""
        text = "x" * length
        for entry, field in (
            (replace(REQUEST, rule=text), "rule"),
            (replace(REQUEST, officer_id=text), "officer_id"),
            (replace(REQUEST, subjects=(text,)), "subject"),
            (replace(RESPONSE, detail=text), "detail"),
        ):
            raw = encode_entry(entry)
            at = raw.index(text.encode())
            for byte in (0x80, 0xA9, 0xBF):
                bad = raw[:at] + bytes([byte]) + raw[at + 1 :]
                assert isinstance(_slow_link(bad), str), field
                assert _fast_link(bad) == _slow_link(bad), field

    def test_a_fingerprint_must_be_lowercase_hex_on_the_fast_path(self) -> None:
        raw = encode_entry(REQUEST)
        field = struct.pack(">I", 64) + b"ab" * 32
        assert raw.count(field) == 1
        for bad in (
            b"AB" * 32,
            b"ab" * 31 + b"g0",
            b"ab" * 31 + b"a",
            b"ab" * 32 + b"a",
            b"\xc3\xa9" * 32,
        ):
            data = raw.replace(field, struct.pack(">I", len(bad)) + bad)
            assert isinstance(_slow_link(data), str)
            assert _fast_link(data) == _slow_link(data)


class TestSearchColumns:
    def test_columns_of_the_leaf_equal_the_columns_of_the_entry(self) -> None:
        for entry in (REQUEST, RESPONSE, EVENT):
            assert index_columns(encode_entry(entry)) == columns_of(searchable(entry))
            assert fields_of(columns_of(searchable(entry))) == searchable(entry)

    @given(entries)
    @settings(max_examples=200)
    def test_columns_agree_for_any_entry(self, entry: AuditEntry) -> None:
        assert index_columns(encode_entry(entry)) == columns_of(searchable(entry))
        assert entry_columns(entry) == columns_of(searchable(entry))

    def test_a_response_leg_takes_its_requests_search_fields(self) -> None:
        request, response = searchable(REQUEST), searchable(RESPONSE)
        joined = with_request(response, request)
        assert joined.leg == EntryKind.RESPONSE
        assert joined.outcome == "ok"
        assert (joined.case_number, joined.officer_id, joined.subjects) == (
            REQUEST.case_number,
            REQUEST.officer_id,
            REQUEST.subjects,
        )
        assert columns_of(joined) == with_request_columns(columns_of(response), columns_of(request))

    def test_event_fields(self) -> None:
        fields = searchable(EVENT)
        assert (fields.leg, fields.action, fields.officer_id, fields.requesting_agency) == (
            EntryKind.EVENT,
            "identifier_reveal",
            "staff-007",
            "bank.icbc",
        )
        assert fields.reason == "ticket=T-1; field=身份证号"


class TestResponseLegOfAnotherShard:
    """A ticket answer logged by another instance than the request: one more field, its index
    row names no request leg here (-1); every other leg keeps its bytes."""

    def test_round_trips_and_names_no_local_request_leg(self) -> None:
        foreign = ResponseLeg(**{**_fields(RESPONSE), "request_origin": "test/gateway/shard-a"})
        data = encode_entry(foreign)
        assert decode_entry(data) == foreign
        assert len(data) == len(encode_entry(RESPONSE)) + 4 + len(foreign.request_origin)
        assert index_columns(data)[11] == -1
        assert entry_columns(foreign)[11] == -1
        assert entry_link(data)[2] == -1
        assert index_columns(encode_entry(RESPONSE))[11] == RESPONSE.request_leaf_index

    def test_an_empty_origin_field_is_refused(self) -> None:
        data = encode_entry(RESPONSE) + b"\x00\x00\x00\x00"
        with pytest.raises(VerificationError, match="request_origin is present but empty"):
            decode_entry(data)
