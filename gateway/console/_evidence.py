"""The auditor console's evidence downloads: masked by default, in full only with a reason.

The full bundle (``fedgate.evidence``) holds the leaf bytes, which carry the signed request and
response with every account, ID and phone number in the clear. The masked bundle carries what
the entry page shows before any reveal: each leg of the exchange with its identifiers masked,
its leaf hash, and its C2SP ``tlog-proof``, so inclusion in the log can still be proved offline
(``fedgate.tlogproof.verify_tlog_proof_hash``); the signatures inside the legs cannot, for that
needs the bytes.
"""

from __future__ import annotations

import json
from typing import Any, Final

from fedgate.web.text import mask_text
from gateway.audit.reader import LogView
from gateway.console._exchange import ExchangeView, Shown, ShownTable

__all__ = ["MASKED_FORMAT", "masked_bundle"]

MASKED_FORMAT: Final = "fedgate-evidence-masked/v1"


def _item(item: Shown | ShownTable) -> dict[str, Any]:
    if isinstance(item, ShownTable):
        return {
            "label": item.label,
            "headers": list(item.headers),
            "rows": [list(r) for r in item.rows],
        }
    # Free text (a case's reason, a purpose, a detail) may hold an identifier too.
    return {"label": item.label, "text": mask_text(item.text)}


def masked_bundle(log: LogView, view: ExchangeView) -> bytes:
    """The exchange of ``view`` (built with nothing revealed) as a masked evidence bundle."""
    if any(s.revealed for leg in view.legs for sec in leg.sections for s in sec.items):
        raise ValueError("a masked bundle is built from a view with nothing revealed")
    legs = [
        {
            "index": leg.index,
            "kind": leg.kind,
            "time": leg.time.isoformat(),
            "outcome": leg.outcome,
            "leaf_hash": log.leaf_hash(leg.index).hex(),
            "tlog_proof": leg.tlog_proof,
            "facts": [_item(f) for f in leg.facts],
            "sections": [
                {"title": sec.title, "items": [_item(i) for i in sec.items]} for sec in leg.sections
            ],
        }
        for leg in view.legs
    ]
    doc = {
        "format": MASKED_FORMAT,
        "origin": log.origin,
        "index": view.focus,
        "note": "identifiers are masked; the full bundle is given to an auditor who states a "
        "reason, and the download is logged",
        "legs": legs,
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode()
