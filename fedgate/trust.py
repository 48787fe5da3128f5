"""The one holder of what a process currently trusts: the signed member registry.

Every component of a process (the gateway's pipeline, forwarding and response checks, reports,
events, the audit service and console, tickets; an agency node's re-verification, its report
sender) reads the registry through one ``TrustHolder`` at the moment it needs it, never a copy
taken at start-up. A reload swaps the holder's contents in one assignment, so a revocation takes
effect for every component at once.

Contract:

- ``swap`` MUST refuse (return ``False``, keep the current contents) a registry whose serial is
  lower than the current one: an older signed registry could bring back a revoked member or key.
- Readers MUST see either the old or the new contents, never a mix (one attribute, replaced).
- ``reload`` MUST keep the current contents when the files do not verify.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fedgate.errors import FedgateError
from fedgate.registry import Registry

__all__ = ["TrustHolder"]

_log = logging.getLogger("fedgate.trust")


class TrustHolder:
    """The current member registry of one process. Calling the holder returns the registry, so
    it can be passed wherever a ``Callable[[], Registry]`` is expected."""

    __slots__ = ("_registry",)

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def __call__(self) -> Registry:
        return self._registry

    @property
    def registry(self) -> Registry:
        """The registry in force now."""
        return self._registry

    def swap(self, registry: Registry) -> bool:
        """Put ``registry`` in force for every reader; refuses (``False``) an older serial."""
        current = self._registry
        if registry.serial < current.serial:
            _log.error(
                "registry serial %s is older than the one in force (%s); refused",
                registry.serial,
                current.serial,
            )
            return False
        self._registry = registry
        return True

    def reload(self, directory: Path) -> bool:
        """Load ``registry.json`` from the federation ``directory`` and swap it in; keeps the
        current registry (and returns ``False``) when it does not verify or is older."""
        try:
            registry = Registry.load_dir(directory)
        except FedgateError as exc:
            _log.error(
                "registry reload failed; keeping serial %s: %s", self._registry.serial, exc.message
            )
            return False
        return self.swap(registry)
