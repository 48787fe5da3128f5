"""The stored checkpoints of a log, read the same way from either store.

A store keeps some of its signed and cosigned notes in history tables and the newest of each
as its head (``store.kept_checkpoint``); every question about them is one of five statements,
which each store writes in its own dialect (``NoteStatements``). ``StoredNotes`` asks them:
a store mixes it in and supplies ``_notes``, which runs one statement with its parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

__all__ = ["NO_END", "NoteStatements", "StoredNotes"]

NO_END = 1 << 62
"""An upper bound past any log's size, for open-ended ranges."""


@dataclass(frozen=True, slots=True)
class NoteStatements:
    """A store's five statements over its history and head, each returning ``(size, note)``
    rows. Parameters, in order: ``at`` (size, size), ``signed_in`` and ``cosigned_in``
    (lo, hi, lo, hi), ``at_or_before`` (size, size), ``cosigned_covering`` (index)."""

    at: str
    signed_in: str
    at_or_before: str
    cosigned_in: str
    cosigned_covering: str


class StoredNotes:
    """The checkpoint reads of a ``LogDatabase`` (history tables plus heads)."""

    NOTES: ClassVar[NoteStatements]

    def _notes(self, what: str, statement: str, params: tuple[int, ...]) -> list[tuple[int, str]]:
        """Rows ``(size, note)`` of ``statement``; raises ``AuditUnavailable`` naming ``what``."""
        raise NotImplementedError

    def checkpoint(self, size: int) -> str | None:
        """The stored signed checkpoint of exactly ``size`` entries, if kept."""
        rows = self._notes("read a checkpoint", self.NOTES.at, (size, size))
        return rows[0][1] if rows else None

    def checkpoints(self) -> list[tuple[int, str]]:
        """Every stored signed checkpoint (history and head), by size."""
        return self.checkpoints_in(-1, NO_END)

    def cosigned_checkpoints(self) -> list[tuple[int, str]]:
        """Every stored cosigned checkpoint (history and head), by size."""
        return self.cosigned_in(-1, NO_END)

    def checkpoints_in(self, lo: int, hi: int) -> list[tuple[int, str]]:
        """The stored checkpoints with ``lo < size <= hi``, by size (a primary-key range and
        the head)."""
        return self._notes("read checkpoints", self.NOTES.signed_in, (lo, hi, lo, hi))

    def checkpoint_at_or_before(self, size: int) -> tuple[int, str] | None:
        """The stored checkpoint with the greatest size at most ``size`` (one primary-key
        lookup and the head)."""
        rows = self._notes("read a checkpoint", self.NOTES.at_or_before, (size, size))
        return rows[0] if rows else None

    def cosigned_in(self, lo: int, hi: int) -> list[tuple[int, str]]:
        """The stored cosigned checkpoints with ``lo < size <= hi``, by size (the history's
        index on size and the head)."""
        return self._notes("read cosigned checkpoints", self.NOTES.cosigned_in, (lo, hi, lo, hi))

    def cosigned_covering(self, index: int) -> tuple[int, str] | None:
        """The newest cosigned checkpoint whose tree holds entry ``index``: the cosigned head,
        if it covers it (one primary-key lookup; older cosigned ones are smaller)."""
        rows = self._notes("read a cosigned checkpoint", self.NOTES.cosigned_covering, (index,))
        return rows[0] if rows else None
