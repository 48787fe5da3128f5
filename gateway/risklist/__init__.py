"""The shared risk list at the centre: its transparency log, who may change it, replication.

- ``_log``: the list's own log (origin ``<audit origin>/risklist``), its SQLite store, witnesses;
- ``_changes``: who may list what (pipeline stage 6) and the change a request makes;
- ``_service``: ``RiskListService`` (``Follow``, ``GetRiskCheckpoint``) for members' replicas;
- ``_stats``: the centre's daily countermeasure counts (a projection of both logs).
"""

from gateway.risklist._changes import RULE_IDS, ChangeRefused, build_change, check_lister, key_of
from gateway.risklist._log import EntryKey, RiskListLog
from gateway.risklist._service import SERVICE_NAME, RiskListServicer
from gateway.risklist._stats import CentreStats

__all__ = [
    "RULE_IDS",
    "SERVICE_NAME",
    "CentreStats",
    "ChangeRefused",
    "EntryKey",
    "RiskListLog",
    "RiskListServicer",
    "build_change",
    "check_lister",
    "key_of",
]
