"""When the audit store's search projection catches up: the timing rule and the bounds.

``ThreadedStore`` (``gateway.audit.store``) catches the projection up on the writer's thread
after the commits, never inside one, and never two catch-ups at once. A catch-up starts:

- at once when a commit leaves ``CATCH_UP_ENTRIES`` (8,192) or more leaves behind;
- otherwise at ``catch_up_at``: ``CATCH_UP_DELAY_S`` (0.5 s) after the commit that left the
  lag when the log was quiet, and no sooner than ``CATCH_UP_SPACING_S`` after the previous
  catch-up started when appends go on (0.5 s too: larger, rarer catch-ups would write the index
  pages they dirty fewer times, but hold commits back longer, see ``CATCH_UP_SPACING_S``);
- at once when a reader about to read the rollups asks for it (``catch_up_soon``) and leaves
  are behind that no running catch-up covers, or as soon as the running one ends.

A catch-up that fails is retried ``retry_after`` later: ``CATCH_UP_RETRY_S`` after the
first failure, twice as long after each further one, at most ``CATCH_UP_RETRY_MAX_S``; until
then neither a reader's ``catch_up_soon`` nor the entries bound starts one (a chart polling
every 20 ms must not buy a failing writer transaction, and a warning, each time). The first
failure is logged as a warning, the repeats at debug level; a success starts the count again.

Bounds, while the writer keeps up with the appends and the catch-ups succeed: a catch-up
covers a leaf at most ``CATCH_UP_SPACING_S`` after its commit, or when ``CATCH_UP_ENTRIES``
are behind, whichever comes first, unless a catch-up is running then (it starts when that
one ends); so the projection lags the log by at most ``CATCH_UP_ENTRIES`` leaves plus one
batch (the commit that crosses the bound: up to the log's ``max_batch``) plus those
committed while one catch-up runs, and a leaf by at most ``CATCH_UP_SPACING_S`` plus two
catch-ups' time (0.5 s plus one catch-up after a quiet spell). Searches see every committed
leaf regardless.

The store reads these values through this module (``_catch_up.CATCH_UP_ENTRIES``), so a test
that changes one here changes it for the store too.
"""

from __future__ import annotations

__all__ = [
    "CATCH_UP_DELAY_S",
    "CATCH_UP_ENTRIES",
    "CATCH_UP_RETRY_MAX_S",
    "CATCH_UP_RETRY_S",
    "CATCH_UP_SPACING_S",
    "catch_up_at",
    "retry_after",
]

CATCH_UP_ENTRIES = 8192
"""A commit that leaves the projection this many leaves behind starts a catch-up at once; it
is also the most leaves one of ``ThreadedStore``'s catch-up transactions holds (closing or
migrating a log catches up in larger ones: 50,000 leaves, ``_CATCH_UP_CHUNK`` in
``sqlite_store`` and ``pg_store``). It bounds the leaf rows a search reads past the projection
(~0.8 us of CPU each on the 10 M log: ~6.5 ms at this bound)."""
CATCH_UP_DELAY_S = 0.5
"""After a quiet spell, the catch-up starts this long after the commit that left a lag."""
CATCH_UP_SPACING_S = 0.5
"""Under sustained appends, catch-ups start at least this long apart (``catch_up_at``).

The three bounds trade a little lag (which searches do not see: they read the leaf rows past
the projection) for fewer, larger catch-ups: an index page a catch-up dirties is written once per
catch-up (WAL, then the database), and on a big log the officer, case and subject indexes spread
a catch-up's rows over the pages of the newest key block. At 2,048 entries or 100 ms, a 100 k-entry
log cost ~35 % more CPU per append than an empty one. On the 10 M log a catch-up costs ~17.6 us
of the writer's CPU per entry at 4,096 entries (what 0.5 s holds at a few thousand appends/s),
~16.6 at 8,192, ~15.1 at 16,384 and no less at 32,768 (``docs/benchmarks.md``).

Larger catch-ups cost the pipeline's latency, though: a catch-up holds the writer's thread, so
the commits behind it wait for all of it. With 2 s and 16,384 the gateway's added p99 rose from
~22 to 33-64 ms in the pipeline bench (A/B alternated, quiet); at 0.5 s and 8,192 it was level
with the code before the spacing. So the spacing is kept as a mechanism and set equal to the
delay: a catch-up at most 0.5 s after the commit that left a lag, at once from 8,192 behind."""

CATCH_UP_RETRY_S = 2.0
"""The wait before retrying a catch-up that failed once (``retry_after``)."""
CATCH_UP_RETRY_MAX_S = 60.0
"""The longest wait before retrying a catch-up that failed (``retry_after``)."""


def catch_up_at(behind_since: float, last_started: float | None) -> float:
    """When (loop time) the next catch-up starts if fewer than ``CATCH_UP_ENTRIES`` leaves are
    behind: ``CATCH_UP_DELAY_S`` after the first commit it will cover (at ``behind_since``),
    and no sooner than ``CATCH_UP_SPACING_S`` after the previous catch-up started
    (``last_started``; ``None``: none yet). A quiet log is caught up half a second after a
    commit; under steady appends catch-ups come every ``CATCH_UP_SPACING_S``. Since the
    previous one started before that commit, the result is never later than
    ``behind_since + CATCH_UP_SPACING_S``."""
    at = behind_since + CATCH_UP_DELAY_S
    if last_started is not None:
        at = max(at, last_started + CATCH_UP_SPACING_S)
    return at


def retry_after(failures: int) -> float:
    """How long after the ``failures``-th failed catch-up in a row (1: the first) the next
    starts: ``CATCH_UP_RETRY_S``, doubled for each further failure, at most
    ``CATCH_UP_RETRY_MAX_S``."""
    if failures < 1:
        raise ValueError(f"failures must be at least 1, not {failures}")
    # The exponent is capped before it is used: a writer failing for a day must not overflow.
    return min(CATCH_UP_RETRY_S * 2.0 ** min(failures - 1, 32), CATCH_UP_RETRY_MAX_S)
