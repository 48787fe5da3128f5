"""Node configuration: TOML with relative paths, environment overrides, checked options."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from adapters.config import ActionMode, NodeConfig, load_config
from fedgate.errors import InvalidArgument
from fedgate.types import MemberId

FILE = """
member = "bank.icbc"
federation = "../fed"
state = "state/icbc"
staff = ["icbc.zhang", "icbc.li"]

[backend]
kind = "reference"
path = "data/bank.icbc.sqlite"

[actions]
default = "automatic"
transactions = "manual"

[queue]
deadline_minutes = 60
reminder_minutes = 5
"""

_BASE = 'member = "bank.icbc"\nfederation = "f"\nstate = "s"\n'


class TestLoadConfig:
    def test_a_file_with_relative_paths(self, tmp_path: Path) -> None:
        path = tmp_path / "conf" / "node.toml"
        path.parent.mkdir()
        path.write_text(FILE, encoding="utf-8")
        config = load_config(path, env={})
        assert config.member_id == "bank.icbc"
        assert config.federation_dir == (tmp_path / "fed").resolve()
        assert config.state_dir == (tmp_path / "conf" / "state" / "icbc").resolve()
        assert config.backend_path == (tmp_path / "conf" / "data" / "bank.icbc.sqlite").resolve()
        assert config.staff == ("icbc.zhang", "icbc.li")
        assert config.mode_of("transactions") is ActionMode.MANUAL
        assert config.mode_of("account_holder") is ActionMode.AUTOMATIC
        assert config.queue_deadline == timedelta(hours=1)
        assert config.reminder == timedelta(minutes=5)
        assert config.listen is None

    def test_environment_overrides_the_file(self, tmp_path: Path) -> None:
        path = tmp_path / "node.toml"
        path.write_text(FILE, encoding="utf-8")
        env = {
            "FEDGATE_NODE__LISTEN": "127.0.0.1:6000",
            "FEDGATE_NODE__STAFF": '["icbc.wu", "icbc.zhao"]',
            "FEDGATE_NODE__ACTIONS__ACCOUNT_HOLDER": "manual",
            "FEDGATE_NODE__ACTIONS__DEFAULT": "manual",
            "FEDGATE_NODE__QUEUE__DEADLINE_MINUTES": "30",
            "FEDGATE_NODE_LISTEN": "ignored: not the prefix",
        }
        config = load_config(path, env=env)
        assert config.listen == "127.0.0.1:6000"
        assert config.staff == ("icbc.wu", "icbc.zhao")
        assert config.mode_of("account_holder") is ActionMode.MANUAL
        assert config.mode_of("freeze") is ActionMode.MANUAL
        assert config.queue_deadline == timedelta(minutes=30)

    def test_to_toml_reads_back(self, tmp_path: Path) -> None:
        config = NodeConfig(
            member_id=MemberId("bank.ccb"),
            federation_dir=tmp_path / "fed",
            state_dir=tmp_path / "state",
            listen="127.0.0.1:0",
            staff=("ccb.wang",),
            backend_path=tmp_path / "ccb.sqlite",
            modes={"freeze": ActionMode.MANUAL},
            reminder=timedelta(minutes=10),
        )
        path = tmp_path / "node.toml"
        path.write_text(config.to_toml(), encoding="utf-8")
        assert load_config(path, env={}) == config

    def test_to_toml_quotes_awkward_paths(self, tmp_path: Path) -> None:
        odd = tmp_path / 'a "quoted" \\ dir'
        config = NodeConfig(member_id=MemberId("bank.ccb"), federation_dir=odd, state_dir=odd)
        path = tmp_path / "node.toml"
        path.write_text(config.to_toml(), encoding="utf-8")
        assert load_config(path, env={}).federation_dir == odd

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('federation = "f"\nstate = "s"', "member is required"),
            ('member = "Bank!"\nfederation = "f"\nstate = "s"', "invalid member id"),
            ('member = "bank.icbc"\nstate = "s"', "federation is required"),
            (_BASE + '[actions]\nteleport = "manual"', "unknown action"),
            (_BASE + '[actions]\nfreeze = "maybe"', "use 'automatic' or 'manual'"),
            ('member = "bank.icbc"\nfederation = "f"\nstate = "s"\nstaff = ["x"]', "staff id"),
            (_BASE + "[queue]\nreminder_minutes = 2000", "reminder"),
            ("member = ", "not valid TOML"),
            (_BASE + "[queue]\ndeadline_minuts = 5", r"unknown option\(s\) queue\.deadline_minuts"),
            (_BASE + "lisen = '127.0.0.1:1'", "lisen"),
            (_BASE + "staff = 'icbc.wu'", "staff must be a list"),
            (
                _BASE + "[monitor]\npoll_seconds = 'often'",
                r"monitor\.poll_seconds must be a number",
            ),
        ],
    )
    def test_bad_options_are_named(self, tmp_path: Path, text: str, message: str) -> None:
        path = tmp_path / "node.toml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(InvalidArgument, match=message):
            load_config(path, env={})


class TestChaseMode:
    """A chase's emergency requests are answered by machine unless ``[actions] chase`` says
    staff (issue 11): the mode of the action itself does not apply to them."""

    def test_automatic_by_default_even_where_staff_answer(self, tmp_path: Path) -> None:
        path = tmp_path / "node.toml"
        path.write_text(FILE, encoding="utf-8")
        config = load_config(path, env={})
        assert config.mode_of("transactions") is ActionMode.MANUAL
        assert config.mode_of("transactions", chase=True) is ActionMode.AUTOMATIC
        # only the chase's own actions: a workflow link takes nothing else past the staff
        config = NodeConfig(
            member_id=MemberId("carrier.cmcc"), federation_dir=tmp_path, state_dir=tmp_path,
            modes={"call_records": ActionMode.MANUAL},
        )  # fmt: skip
        assert config.mode_of("call_records", chase=True) is ActionMode.MANUAL

    def test_staff_when_the_file_says_so(self, tmp_path: Path) -> None:
        path = tmp_path / "node.toml"
        path.write_text(
            FILE.replace('default = "automatic"', 'default = "automatic"\nchase = "manual"')
        )
        config = load_config(path, env={})
        assert config.chase_mode is ActionMode.MANUAL
        assert config.mode_of("stop_payment", chase=True) is ActionMode.MANUAL
        path.write_text(config.to_toml(), encoding="utf-8")
        assert load_config(path, env={}) == config

    def test_a_bad_mode_is_named(self, tmp_path: Path) -> None:
        path = tmp_path / "node.toml"
        path.write_text(_BASE + '[actions]\nchase = "sometimes"\n', encoding="utf-8")
        with pytest.raises(InvalidArgument, match="chase"):
            load_config(path, env={})
