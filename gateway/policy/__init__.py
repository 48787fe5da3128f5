"""Stage 6's access policy: the Casbin model and policy in ``policies/``, the deciders, reload.

``_decider`` holds the deciders (pycasbin itself and the indexed one, which must agree with it),
``_index`` the index behind the fast decider, ``cli`` the ``fedgate policy`` commands.
"""

from gateway.policy._decider import (
    ACTIONS,
    DEFAULT_MEMBER_KINDS,
    MEMBER_KINDS,
    PERSONAL_DATA_ACTIONS,
    ROLES,
    CasbinDecider,
    Decision,
    IndexedDecider,
    PolicyConfigError,
    PolicyDecider,
    PolicyRequest,
    ReloadingDecider,
    TruthRow,
    authorize,
    default_policy_dir,
    load_default_decider,
    load_truth_table,
)

__all__ = [
    "ACTIONS",
    "DEFAULT_MEMBER_KINDS",
    "MEMBER_KINDS",
    "PERSONAL_DATA_ACTIONS",
    "ROLES",
    "CasbinDecider",
    "Decision",
    "IndexedDecider",
    "PolicyConfigError",
    "PolicyDecider",
    "PolicyRequest",
    "ReloadingDecider",
    "TruthRow",
    "authorize",
    "default_policy_dir",
    "load_default_decider",
    "load_truth_table",
]
