"""One exchange as the auditor console shows it: its legs decoded, the checks run on them, and
which identifiers stay masked.

An entry page shows the whole exchange the entry belongs to: the request leg (the signed
request as received, the decision and matched rule), every response leg (the agency's signed
answer) — or the event alone. The checks are the real ones, run on every page view:

- the request's and the response's Ed25519 signatures, with the keys the member registry lists
  for the time they signed (``fedgate.evidence.check_request_leg`` / ``check_response_leg``,
  the checks ``fedgate audit verify`` and evidence bundles use);
- each leg's inclusion proof against the log's latest checkpoint, whose signature is checked
  with the gateway's keys from the registry (not the log's own idea of its key), and the
  witness cosignatures on that checkpoint.

Identifier values (account, ID and phone numbers, wherever they appear: identifier fields, and
inside free text such as a refusal's rule, an agency's detail, a case's reason or an event's
details) are masked unless their
``(leaf index, field key)`` is in ``revealed``; ``ExchangeView.revealable`` lists every pair
that could be revealed, so a reveal request can be checked against it.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from fedgate.audit_entry import (
    AuditEntry,
    EntryKind,
    EventEntry,
    RequestLeg,
    ResponseLeg,
    decode_entry,
)
from fedgate.checkpoint import Checkpoint, cosignatures_in
from fedgate.envelope import decode_request, decode_response
from fedgate.errors import FedgateError, NotFound, VerificationError
from fedgate.evidence import (
    HistoricalKeys,
    check_request_leg,
    check_response_leg,
    witness_verifiers,
)
from fedgate.merkle import leaf_hash, verify_inclusion
from fedgate.registry import Registry
from fedgate.tlogproof import TlogProof
from fedgate.v1 import common_pb2, envelope_pb2, request_pb2
from fedgate.web.protoview import FieldView, TableView, describe, enum_name
from fedgate.web.text import BEIJING, mask_text
from gateway.audit.insights import LogInsights
from gateway.audit.reader import LogView
from gateway.audit.store import SearchQuery
from gateway.console._state import verify_checkpoint

__all__ = [
    "Check",
    "ExchangeView",
    "LegView",
    "Section",
    "Shown",
    "ShownTable",
    "load_exchange",
]

_MAX_RESPONSES: Final = 20
Translate = Callable[..., str]


@dataclass(frozen=True, slots=True)
class Shown:
    """One labelled value. ``key`` (empty for values that are never masked) names it within its
    leg for a reveal; ``masked`` says it is shown masked now, ``revealed`` that it was revealed."""

    label: str
    text: str
    key: str = ""
    masked: bool = False
    revealed: bool = False
    mono: bool = False


@dataclass(frozen=True, slots=True)
class ShownTable:
    """A repeated message as a table; masked or revealed as a whole, like ``Shown``."""

    label: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    key: str = ""
    masked: bool = False
    revealed: bool = False


@dataclass(frozen=True, slots=True)
class Section:
    title: str
    items: tuple[Shown | ShownTable, ...]


@dataclass(frozen=True, slots=True)
class Check:
    """One check's result: ``ok`` True (verified), False (failed) or None (nothing to check,
    or not expected to verify, such as a request refused for its signature)."""

    ok: bool | None
    text: str


@dataclass(frozen=True, slots=True)
class LegView:
    index: int
    kind: str
    """``request``, ``response`` or ``event``."""
    time: datetime
    outcome: str
    facts: tuple[Shown, ...]
    sections: tuple[Section, ...]
    checks: tuple[Check, ...]
    tlog_proof: str


@dataclass(frozen=True, slots=True)
class ExchangeView:
    focus: int
    request_id: str
    case_number: str
    action: str
    legs: tuple[LegView, ...]
    checkpoint: Checkpoint | None
    checkpoint_check: Check
    witnesses: tuple[str, ...]
    revealable: frozenset[tuple[int, str]]
    same_value: Mapping[tuple[int, str], frozenset[tuple[int, str]]] = field(default_factory=dict)
    """For each revealable place, every place on the page showing the same value (itself
    included): one reveal opens them all."""


class _Builder:
    """Builds the views of one page: language, translations, what is revealed."""

    def __init__(self, t: Translate, lang: str, revealed: Collection[tuple[int, str]]) -> None:
        self.t = t
        self.lang = lang
        self.revealed = frozenset(revealed)
        self.revealable: set[tuple[int, str]] = set()
        self.values: dict[tuple[int, str], str] = {}

    def same_value(self) -> dict[tuple[int, str], frozenset[tuple[int, str]]]:
        by_value: dict[str, set[tuple[int, str]]] = {}
        for place, value in self.values.items():
            by_value.setdefault(value, set()).add(place)
        return {place: frozenset(by_value[value]) for place, value in self.values.items()}

    def items(self, index: int, section: str, message: Message) -> tuple[Shown | ShownTable, ...]:
        """``message`` described twice, masked and in the clear; a value whose two texts differ
        is an identifier, shown in the clear only once revealed."""
        masked = describe(message, self.lang, reveal=False)
        clear = describe(message, self.lang, reveal=True)
        out: list[Shown | ShownTable] = []
        for m, c in zip(masked, clear, strict=True):
            key = f"{section}.{m.name}"
            if isinstance(m, FieldView) and isinstance(c, FieldView):
                sensitive = m.text != c.text
                out.append(
                    self._shown(index, m.label, m.text, c.text, key, sensitive, m.identifier)
                )
            elif isinstance(m, TableView) and isinstance(c, TableView):
                sensitive = m.rows != c.rows
                show = sensitive and (index, key) in self.revealed
                if sensitive:
                    self.revealable.add((index, key))
                    self.values[(index, key)] = repr(c.rows)
                out.append(
                    ShownTable(
                        m.label,
                        m.headers,
                        c.rows if show else m.rows,
                        key if sensitive else "",
                        sensitive and not show,
                        show,
                    )
                )
        return tuple(out)

    def _shown(
        self,
        index: int,
        label: str,
        masked: str,
        clear: str,
        key: str,
        sensitive: bool,
        mono: bool = False,
    ) -> Shown:
        if not sensitive:
            return Shown(label, clear, mono=mono)
        self.revealable.add((index, key))
        self.values[(index, key)] = clear
        show = (index, key) in self.revealed
        return Shown(label, clear if show else masked, key, not show, show, True)

    def text(self, index: int, key: str, label: str, text: str, *, mono: bool = False) -> Shown:
        """A free-text value: masked (and revealable) when identifiers are written in it."""
        masked = mask_text(text)
        return self._shown(index, label, masked or "—", text or "—", key, masked != text, mono)


def _fact(label: str, text: str, *, mono: bool = False) -> Shown:
    return Shown(label, text or "—", mono=mono)


def _when(at: datetime | None) -> str:
    if at is None:
        return "—"
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _ts(message: Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    stamp = getattr(message, field)
    value: datetime = stamp.ToDatetime(tzinfo=UTC)
    return value


def _request_views(
    b: _Builder, index: int, leg: RequestLeg, keys: HistoricalKeys
) -> tuple[tuple[Shown, ...], tuple[Section, ...], list[Check], request_pb2.Request | None]:
    t = b.t
    decision = [
        _fact(t("entry.decision"), t(f"outcome.{leg.decision}")),
        b.text(index, "rule", t("entry.rule"), leg.rule, mono=True),
    ]
    facts = [
        _fact(t("entry.received_at"), _when(leg.received_at)),
        _fact(t("entry.peer"), leg.peer),
        _fact(t("entry.peer_cert"), leg.peer_cert_sha256[:16], mono=True),
    ]
    checks: list[Check] = []
    request: request_pb2.Request | None = None
    try:
        envelope = envelope_pb2.SignedEnvelope.FromString(leg.envelope)
        request = decode_request(envelope.body)
    except (ProtobufDecodeError, FedgateError):
        checks.append(Check(None if leg.decision == "refused" else False, t("check.undecodable")))
    if request is not None:
        try:
            signer = check_request_leg(leg, keys)
            checks.append(
                Check(True, t("check.request_signed", signer=signer, key=envelope.key_id[:16]))
            )
        except VerificationError as exc:
            refused = leg.decision == "refused"
            key = "check.request_unsigned" if refused else "check.request_bad"
            checks.append(Check(None if refused else False, t(key, detail=exc.message)))
    sections: list[Section] = []
    if request is None:
        facts = [*decision, *facts]
    else:
        r = request
        case_type = enum_name(common_pb2.CaseType.DESCRIPTOR, r.case.case_type)
        legal = enum_name(common_pb2.LegalDocumentKind.DESCRIPTOR, r.legal_document.kind)
        facts = [
            *decision,
            _fact(t("item.request_id"), r.request_id, mono=True),
            _fact(t("entry.issued_at"), _when(_ts(r, "issued_at"))),
            _fact(t("item.requesting_agency"), r.requesting_agency),
            _fact(t("entry.target_agency"), r.target_agency),
            _fact(t("item.case"), r.case.case_number, mono=True),
            _fact(t("item.case_type"), t(f"case_type.{case_type}")),
            b.text(index, "case.reason", t("item.case_reason"), r.case.reason),
            b.text(
                index,
                "legal_document",
                t("item.legal_document"),
                f"{t(f'legal_document.{legal}')} {r.legal_document.number}",
            ),
            _fact(t("queue.col.urgency"), t(f"urgency.{int(r.urgency)}")),
            b.text(index, "purpose", t("item.purpose"), r.purpose),
            _fact(t("item.deadline"), _when(_ts(r, "answer_deadline"))),
            *(
                [_fact(t("entry.original_request"), r.original_request_id, mono=True)]
                if r.original_request_id
                else []
            ),
            *facts,
        ]
        sections.append(Section(t("item.officer"), b.items(index, "officer", r.officer)))
        if r.HasField("second_officer"):
            sections.append(
                Section(
                    t("item.second_officer"), b.items(index, "second_officer", r.second_officer)
                )
            )
        action = r.WhichOneof("action")
        if action is not None:
            sections.append(
                Section(t(f"action.{action}"), b.items(index, "action", getattr(r, action)))
            )
    return tuple(facts), tuple(sections), checks, request


def _response_views(
    b: _Builder, index: int, leg: ResponseLeg, keys: HistoricalKeys, request: RequestLeg | None
) -> tuple[tuple[Shown, ...], tuple[Section, ...], list[Check]]:
    t = b.t
    facts = [
        _fact(t("entry.responder"), leg.responder),
        _fact(t("entry.received_at"), _when(leg.received_at)),
        _fact(t("entry.status"), t(f"outcome.{leg.status}")),
        *([b.text(index, "detail", t("field.detail"), leg.detail)] if leg.detail else []),
        _fact(t("entry.response_hash"), leg.response_hash.hex()[:32] or "—", mono=True),
    ]
    checks: list[Check] = []
    sections: list[Section] = []
    try:
        signer = check_response_leg(
            leg, keys, request_body=request.envelope if request is not None else None
        )
        if signer is None:
            checks.append(Check(None, t("check.no_response")))
        elif leg.request_origin:
            elsewhere = t(
                "check.response_signed_elsewhere",
                signer=signer,
                origin=leg.request_origin,
                index=leg.request_leaf_index,
            )
            checks.append(Check(True, elsewhere))
        else:
            checks.append(Check(True, t("check.response_signed", signer=signer)))
    except VerificationError as exc:
        fault = leg.status == "node_fault"
        checks.append(
            Check(
                None if fault else False,
                t("check.node_fault" if fault else "check.response_bad", detail=exc.message),
            )
        )
    if leg.response_envelope:
        try:
            envelope = envelope_pb2.SignedEnvelope.FromString(leg.response_envelope)
            response = decode_response(envelope.body)
        except (ProtobufDecodeError, FedgateError):
            response = None
        if response is not None:
            facts += [
                _fact(t("entry.answered_by"), response.answered_by or t("entry.automatic")),
                _fact(t("entry.answered_at"), _when(_ts(response, "answered_at"))),
            ]
            result = response.WhichOneof("result")
            if result is not None:
                sections.append(
                    Section(t("entry.result"), b.items(index, "result", getattr(response, result)))
                )
    return tuple(facts), tuple(sections), checks


def _event_views(
    b: _Builder, index: int, leg: EventEntry
) -> tuple[tuple[Shown, ...], tuple[Section, ...]]:
    t = b.t
    facts = [
        _fact(t("entry.event_kind"), leg.kind, mono=True),
        b.text(index, "actor", t("entry.actor"), leg.actor),
        _fact(t("entry.member"), leg.member),
        _fact(t("entry.at"), _when(leg.at)),
    ]
    details = tuple(
        b.text(index, f"detail.{n}", k, v, mono=True) for n, (k, v) in enumerate(leg.detail)
    )
    return tuple(facts), (Section(t("entry.details"), details),) if details else ()


async def _related(log: LogView, insights: LogInsights, index: int, entry: AuditEntry) -> list[int]:
    """The leaf indices of the exchange ``entry`` (at ``index``) belongs to, in order."""
    if isinstance(entry, EventEntry) or (
        isinstance(entry, ResponseLeg) and entry.request_origin
    ):  # (a ticket answer whose request leg is in another shard: none of its legs is here)
        return [index]
    request_index = index if isinstance(entry, RequestLeg) else entry.request_leaf_index
    related = {index, request_index}
    if entry.request_id:
        hits = await insights.newest(
            SearchQuery(request_id=entry.request_id, limit=_MAX_RESPONSES),
            leg=EntryKind.RESPONSE,
        )
        related |= {h.index for h in hits if h.columns[11] == request_index}
    return sorted(i for i in related if 0 <= i < log.size)


def _checkpoint(
    note: str, registry: Registry, origin: str, t: Translate
) -> tuple[Checkpoint | None, Check]:
    try:
        cp = verify_checkpoint(note, registry, origin)
    except VerificationError as exc:
        return None, Check(False, t("check.checkpoint_bad", detail=exc.message))
    return cp, Check(True, t("check.checkpoint_signed", size=cp.size, origin=origin))


async def load_exchange(
    log: LogView,
    insights: LogInsights,
    registry: Registry,
    index: int,
    *,
    t: Translate,
    lang: str,
    revealed: Collection[tuple[int, str]] = (),
) -> ExchangeView:
    """The exchange of entry ``index`` with every check run. Raises ``NotFound`` beyond the
    log, ``VerificationError`` when the entry does not decode, ``AuditUnavailable``."""
    if not 0 <= index < log.size:
        raise NotFound(f"no entry {index}: the log has {log.size} entries")
    data = await log.get_entry(index)
    entry = decode_entry(data)
    indices = await _related(log, insights, index, entry)
    leaves = {i: (data if i == index else await log.get_entry(i)) for i in indices}
    # Proofs are over the stored leaves; the fields shown come from the entries as appended
    # (sealed bodies opened in-process), every identifier masked unless revealed above.
    decoded = {i: decode_entry(await log.open_entry(i)) for i in indices}
    entry = decoded[index]
    note = log.latest_checkpoint()
    checkpoint, cp_check = _checkpoint(note, registry, log.origin, t)
    try:
        witnesses = tuple(sorted(cosignatures_in(note, witness_verifiers(registry))))
    except VerificationError:
        witnesses = ()
    b = _Builder(t, lang, revealed)
    keys = HistoricalKeys(registry)
    request_leg = next((e for e in decoded.values() if isinstance(e, RequestLeg)), None)
    legs: list[LegView] = []
    request_id = case_number = action = ""
    for i in indices:
        e = decoded[i]
        checks: list[Check]
        if isinstance(e, RequestLeg):
            facts, sections, checks, request = _request_views(b, i, e, keys)
            kind, at, outcome = "request", e.received_at, e.decision
            request_id, case_number, action = e.request_id, e.case_number, e.action
            if request is not None and not action:
                action = request.WhichOneof("action") or ""
        elif isinstance(e, ResponseLeg):
            facts, sections, checks = _response_views(b, i, e, keys, request_leg)
            kind, at, outcome = "response", e.received_at, e.status
            request_id = request_id or e.request_id
        else:
            facts, sections = _event_views(b, i, e)
            checks = []
            kind, at, outcome = "event", e.at, e.kind
        proof_text = ""
        if checkpoint is None:
            checks.append(Check(False, cp_check.text))
        elif i >= checkpoint.size:
            checks.append(Check(None, t("check.not_yet", size=checkpoint.size)))
        else:
            proof = log.inclusion_proof(i, checkpoint.size)
            try:
                verify_inclusion(
                    leaf_hash(leaves[i]), i, checkpoint.size, proof, checkpoint.root_hash
                )
                checks.append(Check(True, t("check.included", index=i, size=checkpoint.size)))
            except VerificationError as exc:
                checks.append(Check(False, t("check.not_included", detail=exc.message)))
            try:
                proof_text = TlogProof(index=i, proof=tuple(proof), checkpoint_note=note).marshal()
            except (ValueError, binascii.Error):
                proof_text = ""
        legs.append(LegView(i, kind, at, outcome, facts, sections, tuple(checks), proof_text))
    return ExchangeView(
        focus=index,
        request_id=request_id,
        case_number=case_number,
        action=action,
        legs=tuple(legs),
        checkpoint=checkpoint,
        checkpoint_check=cp_check,
        witnesses=witnesses,
        revealable=frozenset(b.revealable),
        same_value=b.same_value(),
    )
