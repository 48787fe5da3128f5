"""The listed domains and IP addresses as a DNS Response Policy Zone (RPZ), for real resolvers.

``rpz_zone`` writes the zone text that BIND, Unbound, Knot Resolver and PowerDNS Recursor load
(draft-vixie-dnsop-dns-rpz): for each domain in force, a QNAME trigger for the name and for every
name under it, with the action ``CNAME .`` (answer NXDOMAIN); for each IP address in force, a
response-IP trigger (``<prefix>.<reversed address>.rpz-ip``) with the same action, so that an
answer pointing at a listed address is refused too. The zone's serial is the replica's tree
size: it grows with every change, so resolvers that transfer or reload it see it move.

``python -m adapters.risklist.rpz --replica FILE --out ZONE`` writes the zone of a member's
replica (the cyberspace administration's, or any member's) atomically.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from fedgate.files import write_atomically
from fedgate.risklist import RiskIndex, micros
from fedgate.v1 import risklist_pb2

__all__ = ["DEFAULT_ZONE", "main", "rpz_zone"]

DEFAULT_ZONE = "rpz.fedgate.invalid"
_TTL = 60


def _ip_trigger(value: str) -> str:
    address = ipaddress.ip_address(value)
    if address.version == 4:
        return "32." + ".".join(reversed(str(address).split("."))) + ".rpz-ip"
    groups = address.exploded.split(":")
    compact = [g.lstrip("0") or "0" for g in reversed(groups)]
    return "128." + ".".join(compact) + ".rpz-ip"


def rpz_zone(
    index: RiskIndex, *, serial: int, zone: str = DEFAULT_ZONE, now: datetime | None = None
) -> str:
    """The zone text for the domains and IP addresses of ``index`` in force at ``now``."""
    at = micros(now or datetime.now(UTC))
    lines = [
        f"$TTL {_TTL}",
        f"$ORIGIN {zone}.",
        f"@ SOA localhost. hostmaster.localhost. {serial % 2**32} 300 60 86400 {_TTL}",
        "@ NS localhost.",
        "; fedgate shared risk list: listed domains and their subdomains answer NXDOMAIN",
    ]
    for domain in index.values(risklist_pb2.RISK_CATEGORY_DOMAIN, at):
        lines.append(f"{domain} CNAME .")
        lines.append(f"*.{domain} CNAME .")
    for address in index.values(risklist_pb2.RISK_CATEGORY_IP_ADDRESS, at):
        lines.append(f"{_ip_trigger(address)} CNAME .")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from adapters.risklist.replica import Replica, ReplicaKeys

    parser = argparse.ArgumentParser(prog="python -m adapters.risklist.rpz", description=__doc__)
    parser.add_argument("--replica", type=Path, required=True, help="a member's risklist.sqlite")
    parser.add_argument("--out", type=Path, required=True, help="the zone file to write")
    parser.add_argument("--zone", default=DEFAULT_ZONE, help=f"zone name (default {DEFAULT_ZONE})")
    args = parser.parse_args(argv)
    if not args.replica.exists():
        print(f"no replica at {args.replica}", file=sys.stderr)
        return 2
    # Reading a replica already verified when it was applied: no keys are needed to read it.
    replica = Replica.open(args.replica, keys=ReplicaKeys(origin="", log_verifiers=()))
    try:
        text = rpz_zone(replica.index, serial=replica.size, zone=args.zone)
    finally:
        replica.close()
    write_atomically(args.out, text.encode(), mode=0o644)
    print(f"wrote {args.out}: serial {replica.size}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
