"""A member's side of the shared risk list: the verified replica, following the gateway, and
the checks on the carrier's call/SMS path and the bank's transfer path.

- ``replica``: the local SQLite replica and its in-memory index; applies only verified batches;
- ``follower``: follows ``RiskListService.Follow`` over mTLS, reconnecting after outages;
- ``rpz``: the listed domains as a DNS Response Policy Zone.
"""

from adapters.risklist.follower import Follower
from adapters.risklist.replica import Replica

__all__ = ["Follower", "Replica"]
