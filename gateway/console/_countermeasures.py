"""The auditor console's countermeasures page: interceptions, listings, warnings, dissuasion.

Four stacked day charts from the centre's statistics (``gateway.risklist.CentreStats``, a
projection of the audit log and the risk list log, caught up before each page): counts only,
never a number, account or name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from gateway.audit.log import AuditLog
from gateway.console._charts import BarChart, day_chart
from gateway.risklist import CentreStats, RiskListLog

__all__ = ["SECTIONS", "Countermeasures"]

SECTIONS = (
    ("intercepted", "kind"),
    ("listed", "category"),
    ("warnings", "member"),
    ("dissuasion", "dissuasion"),
)
"""(metric, label prefix of its keys), in the page's order."""


@dataclass(frozen=True, slots=True)
class Countermeasures:
    """What the page reads: the statistics and the two logs they are caught up from."""

    stats: CentreStats
    audit: AuditLog
    risklist: RiskListLog

    async def charts(
        self,
        *,
        first: date,
        days: int,
        label: Callable[[str, str], str],
        title: Callable[[date, str, int], str],
    ) -> list[tuple[str, BarChart]]:
        """(metric, chart) for each section, for ``days`` days from ``first``."""
        await self.stats.catch_up(self.audit, self.risklist)
        return [
            (
                metric,
                day_chart(
                    self.stats.per_day(metric, first, days),
                    first=first,
                    days=days,
                    label=lambda key, prefix=prefix: label(prefix, key),  # type: ignore[misc]
                    title=title,
                ),
            )
            for metric, prefix in SECTIONS
        ]
