"""Officers' names for the auditor console's search: an auditor types 王伟, the search runs on
that officer's badge number (the indexed column).

Names are not indexed columns of the log; they are in the signed requests. ``OfficerNames``
reads the request legs it has not read yet (at most ``SCAN_PER_LOOKUP`` per lookup, newest
ones first on the first lookup) and keeps ``(member, badge number) → name`` in memory: a
projection of the log, rebuilt after a restart like everything derived from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from fedgate.audit_entry import RequestLeg, decode_entry
from fedgate.envelope import decode_request
from fedgate.errors import FedgateError
from fedgate.v1 import envelope_pb2
from gateway.audit.reader import LogView

__all__ = ["SCAN_PER_LOOKUP", "OfficerMatch", "OfficerNames", "looks_like_badge"]

SCAN_PER_LOOKUP: Final = 5000
_BADGE: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")


def looks_like_badge(text: str) -> bool:
    """True for a badge number or user id (ASCII letters, digits, ``._-``), False for a name
    (Chinese characters, spaces)."""
    return _BADGE.fullmatch(text) is not None


@dataclass(frozen=True, slots=True)
class OfficerMatch:
    member: str
    officer_id: str
    name: str


class OfficerNames:
    """Officer names seen in the log's request legs, looked up by part of a name."""

    def __init__(self, log: LogView) -> None:
        self._log = log
        self._names: dict[tuple[str, str], str] = {}
        self._read_upto = -1  # entries below this index have been read

    async def find(self, text: str) -> list[OfficerMatch]:
        """Officers whose name contains ``text``, sorted by name, member and badge number."""
        await self._refresh()
        wanted = text.strip()
        return sorted(
            (OfficerMatch(m, o, n) for (m, o), n in self._names.items() if wanted and wanted in n),
            key=lambda x: (x.name, x.member, x.officer_id),
        )

    async def _refresh(self) -> None:
        size = self._log.size
        start = max(self._read_upto, size - SCAN_PER_LOOKUP, 0)
        for index in range(start, size):
            entry = decode_entry(await self._log.open_entry(index))
            if not isinstance(entry, RequestLeg) or not entry.officer_id:
                continue
            try:
                envelope = envelope_pb2.SignedEnvelope.FromString(entry.envelope)
                name = decode_request(envelope.body).officer.name
            except (FedgateError, ValueError):
                continue  # a request refused at decode: no name to learn
            if name:
                self._names[(entry.requesting_agency, entry.officer_id)] = name
        self._read_upto = size
