"""gateway: the federation's centre."""

import fedgate  # noqa: F401  (its switch decides whether compiled modules of ours load)
