"""The RPZ zone text: domains and their subdomains, IPv4 and IPv6 response-IP triggers, lapsed
entries left out. (A real Unbound loads it in test_countermeasures.py.)"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from adapters.risklist.rpz import rpz_zone
from fedgate.risklist import RiskIndex, micros
from fedgate.v1 import risklist_pb2

R = risklist_pb2


def test_zone_lists_domains_and_ips_in_force() -> None:
    now = datetime.now(UTC)
    later, past = micros(now + timedelta(days=1)), micros(now - timedelta(seconds=1))
    index = RiskIndex()
    index.put(R.RISK_CATEGORY_DOMAIN, "fake-bank.example", later)
    index.put(R.RISK_CATEGORY_DOMAIN, "lapsed.example", past)
    index.put(R.RISK_CATEGORY_IP_ADDRESS, "192.0.2.66", later)
    index.put(R.RISK_CATEGORY_IP_ADDRESS, "2001:db8::1", later)
    index.put(R.RISK_CATEGORY_PHONE_NUMBER, "13812345678", later)
    zone = rpz_zone(index, serial=42, now=now)
    lines = zone.splitlines()
    assert "@ SOA localhost. hostmaster.localhost. 42 300 60 86400 60" in lines
    assert "fake-bank.example CNAME ." in lines
    assert "*.fake-bank.example CNAME ." in lines
    assert "32.66.2.0.192.rpz-ip CNAME ." in lines
    assert "128.1.0.0.0.0.0.db8.2001.rpz-ip CNAME ." in lines
    assert "lapsed" not in zone
    assert "13812345678" not in zone
