"""Signed officer rosters (issue 10, item 3): who signs, which bytes, rollback and revocation."""

from __future__ import annotations

import argparse
import base64
import json
import shutil
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fedgate.commands import pki as pki_command
from fedgate.errors import FedgateError, RegistryError
from fedgate.keys import load_private_key
from fedgate.pki import (
    FederationLayout,
    init_federation,
    issue_member,
    revoke_key,
    sign_member_roster,
)
from fedgate.registry import Registry, canonical_json
from fedgate.roster import ROSTER_DOMAIN, Officer, Roster, roster_path, sign_roster
from fedgate.trust import TrustHolder
from fedgate.types import MemberId

GD = MemberId("police.gd.afc")
GZ = MemberId("police.gz.unit")


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_federation(
        tmp_path_factory.mktemp("roster") / "fed", now=datetime.now(UTC) - timedelta(days=1)
    )


@pytest.fixture
def copy(fed: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fed, tmp_path / "fed"))


def _load(directory: Path, member: MemberId) -> Roster:
    return Roster.from_signed(
        roster_path(directory, member).read_bytes(), registry=Registry.load_dir(directory)
    )


class TestDevelopmentRosters:
    def test_init_publishes_a_roster_for_each_police_member(self, fed: Path) -> None:
        holder = TrustHolder.load(fed)
        assert set(holder.rosters) == {GD, GZ}
        gd, gz = holder.rosters[GD], holder.rosters[GZ]
        assert gd.serial == gz.serial == 1
        default = gd.officer("440100123")
        assert default is not None
        assert default.roles == ("police_investigator", "police_duty_officer")
        supervisor = gd.officer("440100623")
        assert supervisor is not None
        assert "centre_supervisor" in supervisor.roles
        city = gz.officer("440100623")
        assert city is not None
        assert "centre_supervisor" not in city.roles
        assert gd.officer("440100400") is None
        second = gd.officer("4401001124")
        assert second is not None
        assert second.roles == ("police_investigator",)

    def test_no_roster_for_other_members(self, fed: Path) -> None:
        assert not (fed / "rosters" / "bank.icbc.json").exists()


class TestSignedBytes:
    def test_the_signature_is_the_members_over_the_domain_and_payload(self, fed: Path) -> None:
        doc = json.loads(roster_path(fed, GZ).read_bytes())
        payload = base64.b64decode(doc["payload"])
        registry = Registry.load_dir(fed)
        owner, key = registry.signing_key(doc["key_id"], at=datetime.now(UTC))
        assert owner.id == GZ
        key.verify(base64.b64decode(doc["signature"]), ROSTER_DOMAIN + payload)
        assert json.loads(payload)["member"] == GZ

    def test_every_payload_byte_matters(self, fed: Path) -> None:
        data = roster_path(fed, GZ).read_bytes()
        doc = json.loads(data)
        payload = bytearray(base64.b64decode(doc["payload"]))
        registry = Registry.load_dir(fed)
        for i in range(0, len(payload), max(1, len(payload) // 40)):
            changed = bytearray(payload)
            changed[i] ^= 0x01
            doc2 = {**doc, "payload": base64.b64encode(bytes(changed)).decode()}
            with pytest.raises(FedgateError):
                Roster.from_signed(canonical_json(doc2) + b"\n", registry=registry)

    def test_a_roster_signed_by_another_member_is_refused(self, fed: Path) -> None:
        roster = _load(fed, GZ)
        other = load_private_key(FederationLayout(fed).signing_key(GD))
        data = sign_roster(roster, other)
        with pytest.raises(RegistryError, match=r"is the roster of police\.gz\.unit but is signed"):
            Roster.from_signed(data, registry=Registry.load_dir(fed))

    def test_an_edited_wrapper_is_refused(self, fed: Path) -> None:
        data = roster_path(fed, GZ).read_bytes().replace(b'{"format"', b'{ "format"')
        with pytest.raises(RegistryError, match="edited outside fedgate"):
            Roster.from_signed(data, registry=Registry.load_dir(fed))

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"roles": ()}, "has no valid roles"),
            ({"valid_to": datetime(2020, 1, 1, tzinfo=UTC)}, "is never valid"),
        ],
    )
    def test_an_inconsistent_roster_is_refused(
        self, change: dict[str, object], message: str
    ) -> None:
        at = datetime(2026, 1, 1, tzinfo=UTC)
        officer = Officer("440100123", "王伟", "u", ("police_investigator",), at, at.replace(2027))
        with pytest.raises(RegistryError, match=message):
            Roster(GZ, 1, at, (replace(officer, **change),))  # type: ignore[arg-type]
        with pytest.raises(RegistryError, match="twice"):
            Roster(GZ, 1, at, (officer, officer))


class TestHolder:
    def test_an_older_roster_is_not_taken(self, copy: Path) -> None:
        holder = TrustHolder.load(copy)
        before = roster_path(copy, GZ).read_bytes()
        now = datetime.now(UTC)
        officer = Officer(
            "440100123", "王伟", "u", ("police_investigator",), now, now.replace(year=2099)
        )
        sign_member_roster(copy, GZ, (officer,))
        assert holder.reload(copy)
        assert holder.rosters[GZ].serial == 2
        assert holder.rosters[GZ].officer("440100124") is None
        roster_path(copy, GZ).write_bytes(before)  # a validly signed, older roster
        assert holder.reload(copy)
        assert holder.rosters[GZ].serial == 2

    def test_a_roster_signed_with_a_revoked_key_is_dropped(self, copy: Path) -> None:
        holder = TrustHolder.load(copy)
        key = Registry.load_dir(copy).member(GZ).signing_keys[-1].key_id
        revoke_key(copy, key, reason="lost laptop (test)")
        assert holder.reload(copy)
        assert GZ not in holder.rosters
        assert GD in holder.rosters
        issue_member(copy, _spec(GZ))  # a new key: the roster is signed again with it
        assert holder.reload(copy)
        assert holder.rosters[GZ].serial == 2
        assert holder.rosters[GZ].officer("440100123") is not None


def _spec(member: MemberId):  # type: ignore[no-untyped-def]
    from fedgate.federation import DEFAULT_MEMBERS

    return next(m for m in DEFAULT_MEMBERS if m.id == member)


class TestRosterCommand:
    def _run(self, argv: list[str]) -> int:
        parser = argparse.ArgumentParser(prog="fedgate")
        pki_command.register(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(argv)
        code: int = args.func(args)
        return code

    def test_signs_the_officers_given(
        self, copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        officers = tmp_path / "officers.json"
        officers.write_text(
            json.dumps(
                [
                    {
                        "id": "440100888",
                        "name": "周涛",
                        "unit": "广州市公安局反诈中心",
                        "roles": ["police_investigator"],
                        "valid_from": "2026-01-01T00:00:00Z",
                        "valid_to": "2030-01-01T00:00:00Z",
                    }
                ]
            )
        )
        argv = ["pki", "roster", "--dir", str(copy), "--member", GZ, "--officers", str(officers)]
        assert self._run(argv) == 0
        assert (
            "signed the roster of police.gz.unit: 1 officers, serial 2" in capsys.readouterr().out
        )
        roster = _load(copy, GZ)
        assert [o.id for o in roster.officers] == ["440100888"]

    @pytest.mark.parametrize(
        ("member", "content", "message"),
        [
            ("bank.icbc", "[]", "only police publish rosters"),
            (GZ, "{}", "must be a JSON list of officers"),
            (GZ, '[{"id": "x"}]', "is missing the field 'name'"),
        ],
    )
    def test_bad_input_is_refused_and_changes_nothing(
        self,
        copy: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        member: str,
        content: str,
        message: str,
    ) -> None:
        before = roster_path(copy, GZ).read_bytes()
        officers = tmp_path / "officers.json"
        officers.write_text(content)
        argv = [
            "pki",
            "roster",
            "--dir",
            str(copy),
            "--member",
            member,
            "--officers",
            str(officers),
        ]
        assert self._run(argv) == 2
        assert message in capsys.readouterr().err
        assert roster_path(copy, GZ).read_bytes() == before
