"""The one holder of what a process currently trusts: the signed member registry and the police
members' signed officer rosters.

Every component of a process (the gateway's pipeline, forwarding and response checks, reports,
events, the audit service and console, tickets; an agency node's re-verification, its report
sender) reads the registry through one ``TrustHolder`` at the moment it needs it, never a copy
taken at start-up. A reload swaps the holder's contents in one assignment, so a revocation takes
effect for every component at once.

Contract:

- ``swap`` MUST refuse (return ``False``, keep the current contents) a registry whose serial is
  lower than the current one: an older signed registry could bring back a revoked member or key.
  Likewise a member's roster with a lower serial than the one in force is refused and the
  current one kept.
- Readers MUST see either the old or the new contents, never a mix (one attribute, replaced).
- ``reload`` MUST keep the current registry when ``registry.json`` does not verify, and a
  member's current roster when its new file does not verify, unless the key that signed the
  current roster is no longer valid (revoked key or member): then the member has no roster.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedgate.errors import FedgateError
from fedgate.registry import Registry
from fedgate.roster import Roster, load_rosters
from fedgate.types import MemberId

__all__ = ["Trust", "TrustHolder"]

_log = logging.getLogger("fedgate.trust")


@dataclass(frozen=True, slots=True)
class Trust:
    """One consistent snapshot: a registry and the rosters verified against it."""

    registry: Registry
    rosters: Mapping[MemberId, Roster] = field(default_factory=dict)


class TrustHolder:
    """The current member registry (and officer rosters) of one process. Calling the holder
    returns the registry, so it can be passed wherever a ``Callable[[], Registry]`` is
    expected."""

    __slots__ = ("_trust",)

    def __init__(
        self, registry: Registry, rosters: Mapping[MemberId, Roster] | None = None
    ) -> None:
        self._trust = Trust(registry, dict(rosters or {}))

    @classmethod
    def load(cls, directory: Path) -> TrustHolder:
        """The registry and rosters of the federation ``directory``; raises ``RegistryError``
        when the registry does not verify (a roster that does not is logged and left out)."""
        registry = Registry.load_dir(directory)
        rosters, problems = load_rosters(directory, registry)
        for member, problem in problems.items():
            _log.error("no officer roster for %s: %s", member, problem)
        return cls(registry, rosters)

    def __call__(self) -> Registry:
        return self._trust.registry

    @property
    def trust(self) -> Trust:
        """The snapshot in force now (read once for a decision that needs both parts)."""
        return self._trust

    @property
    def registry(self) -> Registry:
        """The registry in force now."""
        return self._trust.registry

    @property
    def rosters(self) -> Mapping[MemberId, Roster]:
        """The officer rosters in force now, by police member."""
        return self._trust.rosters

    def swap(self, registry: Registry, rosters: Mapping[MemberId, Roster] | None = None) -> bool:
        """Put ``registry`` (and ``rosters``, if given) in force for every reader; refuses
        (``False``) an older registry serial. Rosters older than the ones in force are not
        taken; rosters whose signing key ``registry`` no longer accepts are dropped."""
        current = self._trust
        if registry.serial < current.registry.serial:
            _log.error(
                "registry serial %s is older than the one in force (%s); refused",
                registry.serial,
                current.registry.serial,
            )
            return False
        merged: dict[MemberId, Roster] = {
            m: r for m, r in current.rosters.items() if r.still_valid(registry)
        }
        for member, roster in (rosters or {}).items():
            held = merged.get(member)
            if held is not None and roster.serial < held.serial:
                _log.error(
                    "roster of %s went back to serial %s (in force: %s); refused",
                    member,
                    roster.serial,
                    held.serial,
                )
                continue
            merged[member] = roster
        self._trust = Trust(registry, merged)
        return True

    def reload(self, directory: Path) -> bool:
        """Load ``registry.json`` and the rosters from the federation ``directory`` and swap
        them in; keeps the current registry (and returns ``False``) when it does not verify or
        is older."""
        try:
            registry = Registry.load_dir(directory)
        except FedgateError as exc:
            _log.error(
                "registry reload failed; keeping serial %s: %s",
                self._trust.registry.serial,
                exc.message,
            )
            return False
        rosters, problems = load_rosters(directory, registry)
        for member, problem in problems.items():
            _log.error("officer roster of %s not taken: %s", member, problem)
        return self.swap(registry, rosters)
