"""The fund-flow chase (police side): follow a victim's money across banks and stop it.

``ChaseEngine`` runs one chase through the gateway with a police ``FedgateClient``; the
tracing rule is ``trace`` (lowest intermediate balance, the holder's own money spent first);
``ChaseReport`` is the tree it finds. ``fedgate chase`` is the command line; ``docs/chase.md``
explains the rule and why.
"""

from fedgate.chase._engine import CHASE_ACTIONS, ChaseEngine
from fedgate.chase._model import (
    Authority,
    ChaseNode,
    ChaseReport,
    NodeKind,
    Outcome,
    VictimTransfer,
)
from fedgate.chase._trace import Inflow, Posting, Traced, trace

__all__ = [
    "CHASE_ACTIONS",
    "Authority",
    "ChaseEngine",
    "ChaseNode",
    "ChaseReport",
    "Inflow",
    "NodeKind",
    "Outcome",
    "Posting",
    "Traced",
    "VictimTransfer",
    "trace",
]
