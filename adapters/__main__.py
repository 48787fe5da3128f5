"""``python -m adapters --config FILE`` runs one agency node (see ``adapters.cli``)."""

from __future__ import annotations

import sys

from adapters.cli import main

__all__: list[str] = []

sys.exit(main())
