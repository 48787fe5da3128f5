"""The auditor web console, served in the gateway's loop.

``_app`` is the Starlette application and its pages; ``_search``, ``_exchange``, ``_state``,
``_charts`` and ``_flags`` are the pages' parts (search, one verified exchange, the log's state,
charts, anomaly flags); ``_countermeasures`` the countermeasures page; ``_shards`` every audit
shard of the federation (several instances on PostgreSQL), as the pages read them.
"""

from gateway.console._app import (
    AUDITOR_ROLE,
    PAGE_SIZE,
    REVEAL_FOR,
    AuditorConsole,
    RunningAuditorConsole,
    start_auditor_console,
)
from gateway.console._countermeasures import Countermeasures

__all__ = [
    "AUDITOR_ROLE",
    "PAGE_SIZE",
    "REVEAL_FOR",
    "AuditorConsole",
    "Countermeasures",
    "RunningAuditorConsole",
    "start_auditor_console",
]
