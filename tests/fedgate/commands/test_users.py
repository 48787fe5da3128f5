"""``add-user`` as the staff and audit command groups mount it."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from fedgate.commands.users import add_user_parser
from fedgate.errors import InvalidArgument
from fedgate.web.auth import Role, UserStore


def parser_for(group: str, role: Role) -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fedgate")
    groups = top.add_subparsers(dest="command", required=True)
    sub = groups.add_parser(group).add_subparsers(dest="sub", required=True)
    add_user_parser(sub, role)
    return top


def run(group: str, role: Role, argv: list[str]) -> int:
    args = parser_for(group, role).parse_args([group, "add-user", *argv])
    result: int = args.func(args)
    return result


class TestAddUser:
    @pytest.mark.parametrize(
        ("group", "role", "member", "user"),
        [
            ("staff", Role.STAFF, "bank.icbc", "icbc.zhang"),
            ("audit", Role.AUDITOR, "procuratorate.gd", "spp.chen"),
        ],
    )
    def test_creates_an_account_from_stdin(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        group: str,
        role: Role,
        member: str,
        user: str,
    ) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\nignored\n"))
        argv = ["--state", str(tmp_path), "--member", member, "--user", user, "--name", "张三"]
        assert run(group, role, [*argv, "--password-stdin"]) == 0
        assert f"added {role.value} account {user} (张三) of {member}" in capsys.readouterr().out
        store = UserStore.in_state_dir(tmp_path)
        account = store.verify_login(user, "correct horse battery")
        store.close()
        assert (account.member_id, account.role) == (member, role)

    def test_no_password_from_a_pipe_without_the_flag(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
        argv = ["--state", str(tmp_path), "--member", "bank.icbc", "--user", "icbc.li"]
        with pytest.raises(InvalidArgument, match="password"):
            run("staff", Role.STAFF, [*argv, "--name", "李四"])

    def test_short_password_is_refused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
        argv = ["--state", str(tmp_path), "--member", "bank.icbc", "--user", "icbc.li"]
        with pytest.raises(InvalidArgument, match="password"):
            run("staff", Role.STAFF, [*argv, "--name", "李四", "--password-stdin"])


class TestWiredIntoTheCli:
    @pytest.mark.parametrize(
        ("group", "member", "user", "role"),
        [
            ("staff", "bank.icbc", "icbc.wu", Role.STAFF),
            ("audit", "audit.office", "audit.zhao", Role.AUDITOR),
        ],
    )
    def test_fedgate_group_add_user(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        group: str,
        member: str,
        user: str,
        role: Role,
    ) -> None:
        from fedgate.cli import main
        from fedgate.web.auth import UserStore

        monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
        argv = [group, "add-user", "--state", str(tmp_path), "--member", member]
        assert main([*argv, "--user", user, "--name", "测试", "--password-stdin"]) == 0
        store = UserStore.in_state_dir(tmp_path)
        try:
            account = store.get(user)
            assert account is not None
            assert account.role is role
        finally:
            store.close()
