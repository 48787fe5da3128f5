"""Officers are real (issue 10, item 3): a police member's acting officer and second officer
must be on its signed roster, valid now, with the role they act under. Each refusal is a
``POLICY_DENIED`` request leg naming the officer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import pytest

from fedgate.audit_entry import RequestLeg
from fedgate.errors import AgencyUnavailable
from fedgate.pki import sign_member_roster
from fedgate.roster import Officer, roster_path
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, request_pb2

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")

GD = "police.gd.afc"
GZ = MemberId("police.gz.unit")
INVESTIGATOR = common_pb2.ROLE_POLICE_INVESTIGATOR
SUPERVISOR = common_pb2.ROLE_CENTRE_SUPERVISOR


def _person(badge: str, role: common_pb2.Role.ValueType) -> common_pb2.Person:
    return common_pb2.Person(id=badge, name="王伟", role=role)


async def _refused(
    h: GatewayHarness, request: request_pb2.Request, member: str, message: str
) -> None:
    before = h.gateway.audit.size
    refusal = await h.refusal(h.sign(request, member), member=member)
    assert (refusal.code, refusal.error.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "POLICY_DENIED",
    )
    assert refusal.error.message == message
    assert h.gateway.audit.size == before + 1
    entry = await h.last_entry()
    assert isinstance(entry, RequestLeg)
    assert (entry.decision, entry.request_id) == ("refused", request.request_id)
    assert entry.rule == f"POLICY_DENIED: {message}"


class TestRoster:
    @pytest.mark.parametrize(
        ("action", "officer", "second", "message"),
        [
            (
                "account_holder",
                _person("440100400", INVESTIGATOR),
                None,
                "officer '440100400' is not on the officer roster of police.gd.afc "
                "(roster serial 1)",
            ),
            (
                "account_holder",
                _person("440100150", SUPERVISOR),
                None,
                "officer 440100150 does not hold the role centre_supervisor on the roster of "
                "police.gd.afc (roles: police_investigator, police_duty_officer)",
            ),
            (
                "call_records",
                _person("440100150", INVESTIGATOR),
                _person("440100450", INVESTIGATOR),
                "second_officer '440100450' is not on the officer roster of police.gd.afc "
                "(roster serial 1)",
            ),
            (
                "location",
                _person("440100151", INVESTIGATOR),
                _person("440100623", SUPERVISOR),
                None,
            ),
            ("account_holder", _person("440100623", SUPERVISOR), None, None),
            ("account_holder", _person("440100152", INVESTIGATOR), None, None),
        ],
    )
    async def test_officers_are_checked_against_the_roster(
        self,
        harness: GatewayHarness,
        action: str,
        officer: common_pb2.Person,
        second: common_pb2.Person | None,
        message: str | None,
    ) -> None:
        request = harness.request(action)
        request.officer.CopyFrom(officer)
        if second is not None:
            request.second_officer.CopyFrom(second)
        if message is None:  # past stage 6 (the carrier may be down: its leg says so)
            harness.node.mode = "ok"
            with contextlib.suppress(AgencyUnavailable):
                await harness.client().submit(request)
            legs = [
                e
                for e in await harness.entries()
                if isinstance(e, RequestLeg) and e.request_id == request.request_id
            ]
            assert [leg.decision for leg in legs] == ["allowed"]
            return
        await _refused(harness, request, GD, message)


class TestQuotasCountRealOfficers:
    async def test_an_invented_officer_is_refused_before_any_quota(
        self, harness: GatewayHarness
    ) -> None:
        """The harness allows 5 requests per officer at once; an officer who is not on the
        roster never reaches the quotas, so every attempt is the same roster refusal."""
        for _ in range(7):
            request = harness.request()
            request.officer.CopyFrom(_person("440100455", INVESTIGATOR))
            await _refused(
                harness,
                request,
                GD,
                "officer '440100455' is not on the officer roster of police.gd.afc "
                "(roster serial 1)",
            )


class TestRosterChanges:
    async def test_validity_window_and_rollback(
        self, harness_factory: Callable[..., Any], gw_federation: Path, tmp_path: Path
    ) -> None:
        h = await harness_factory(gw_federation, tmp_path)
        try:
            first = roster_path(h.federation, GZ).read_bytes()
            now = datetime.now(UTC)
            gone = Officer(
                "440100123",
                "王伟",
                "广州",
                ("police_investigator",),
                now - timedelta(days=30),
                now - timedelta(days=1),
            )
            here = Officer(
                "440100124",
                "李娜",
                "广州",
                ("police_investigator",),
                now - timedelta(days=1),
                now + timedelta(days=30),
            )
            sign_member_roster(h.federation, GZ, (gone, here))
            # Only the roster changed: the gateway's watcher takes it (registry.json unchanged).
            for _ in range(100):
                if h.gateway.pipeline.trust.rosters[GZ].serial == 2:
                    break
                await asyncio.sleep(0.05)
            assert h.gateway.pipeline.trust.rosters[GZ].serial == 2
            request = h.request(requesting_agency=GZ)
            request.officer.CopyFrom(_person("440100123", INVESTIGATOR))
            left = gone.valid_to.isoformat().replace("+00:00", "Z")
            joined = gone.valid_from.isoformat().replace("+00:00", "Z")
            entry_message = (
                f"officer 440100123 is on the roster of police.gz.unit from {joined} until "
                f"{left}, not at "
            )
            refusal = await h.refusal(h.sign(request, GZ), member=GZ)
            assert refusal.error.reason == "POLICY_DENIED"
            assert refusal.error.message.startswith(entry_message)
            ok = h.request(requesting_agency=GZ)
            ok.officer.CopyFrom(_person("440100124", INVESTIGATOR))
            assert (await h.client(GZ).submit(ok)).answer is not None
            # The older, validly signed roster comes back: not taken.
            roster_path(h.federation, GZ).write_bytes(first)
            h.gateway.reload_registry()
            assert h.gateway.pipeline.trust.rosters[GZ].serial == 2
            again = h.request(requesting_agency=GZ)
            again.officer.CopyFrom(_person("440100123", INVESTIGATOR))
            refusal = await h.refusal(h.sign(again, GZ), member=GZ)
            assert refusal.error.message.startswith(entry_message)
        finally:
            await h.close()
