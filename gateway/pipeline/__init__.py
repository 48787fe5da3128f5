"""The gateway's request pipeline: the twelve stages of DESIGN.md, in order.

Public names live here; the parts are private modules of one idea each:

- ``_stages``: stages 1–8 (transport … audit request leg) and the ``Pipeline`` itself;
- ``validation`` and ``_fields``: stage 5, every field, each violation naming its path;
- ``_exchange``: the state of one exchange as it moves through the stages;
- ``_audit_legs``: writing request and response legs (refusals included);
- ``_forwarding``: stages 9–12 (route, response check, response leg, countersignature);
- ``_reports``: agency reports delivered to police through the alert stream.
"""

from gateway.pipeline._stages import PeerSource, Pipeline
from gateway.pipeline.validation import CITING_ACTIONS, subjects_of, validate_request

__all__ = ["CITING_ACTIONS", "PeerSource", "Pipeline", "subjects_of", "validate_request"]
