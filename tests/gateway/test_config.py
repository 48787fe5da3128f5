"""The gateway configuration: TOML, environment overrides, and errors that name the option."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig

MINIMAL = """
[federation]
dir = "fed"

[pipeline]
state_dir = "state"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text, encoding="utf-8")
    return path


class TestGatewayConfig:
    def test_defaults_and_relative_paths(self, tmp_path: Path) -> None:
        config = GatewayConfig.load(write(tmp_path, MINIMAL), env={})
        assert config.federation.dir == tmp_path / "fed"
        assert config.pipeline.clock_skew_s == 300.0
        assert config.audit_path == tmp_path / "state" / "audit.sqlite"
        assert config.server.listen == "127.0.0.1:20051"
        assert config.audit.keep_response_bodies is True
        assert config.audit.witnesses == ()
        assert config.pipeline.replay_synchronous == "normal"

    def test_witnesses(self, tmp_path: Path) -> None:
        text = MINIMAL + "[audit]\nwitnesses = ['pboc.gz', 'audit.office']\n"
        config = GatewayConfig.load(write(tmp_path, text), env={})
        assert config.audit.witnesses == ("pboc.gz", "audit.office")

    def test_environment_overrides_any_value(self, tmp_path: Path) -> None:
        env = {
            "FEDGATE_GATEWAY__PIPELINE__CLOCK_SKEW_S": "60",
            "FEDGATE_GATEWAY__SERVER__LISTEN": "127.0.0.1:6000",
            "FEDGATE_GATEWAY__ROUTING__ENDPOINTS": '{ "bank.icbc" = "127.0.0.1:7000" }',
            "FEDGATE_GATEWAY__QUOTAS__OFFICER_BURST": "3",
            "FEDGATE_GATEWAY__TELEMETRY__LOG_JSON": "false",
            "UNRELATED": "x",
        }
        config = GatewayConfig.load(write(tmp_path, MINIMAL), env=env)
        assert config.pipeline.clock_skew_s == 60.0
        assert config.server.listen == "127.0.0.1:6000"
        assert config.routing.endpoints == {"bank.icbc": "127.0.0.1:7000"}
        assert config.quotas["officer_burst"] == 3
        assert config.telemetry.log_json is False

    @pytest.mark.parametrize(
        ("extra", "option"),
        [
            ("[server]\nlisten = 'nowhere'\n", "server.listen"),
            ("[server]\nlistn = '127.0.0.1:1'\n", "server.listn"),
            ("[routing]\ntimeout_s = 'soon'\n", "routing.timeout_s"),
            ("[routing]\nmax_attempts = 0\n", "routing.max_attempts"),
            ("[telemetry]\nprometheus_listen = '0.0.0.0:9464'\n", "telemetry.prometheus_listen"),
            ("[extra]\nx = 1\n", "extra"),
            ("[audit]\nwitnesses = 'pboc.gz'\n", "audit.witnesses"),
            ("reconcile_interval_s = -1\n", "pipeline.reconcile_interval_s"),
        ],
    )
    def test_mistakes_name_the_option(self, tmp_path: Path, extra: str, option: str) -> None:
        with pytest.raises(ConfigError, match=option.replace(".", r"\.")):
            GatewayConfig.load(write(tmp_path, MINIMAL + extra), env={})

    def test_replay_synchronous_full(self, tmp_path: Path) -> None:
        env = {"FEDGATE_GATEWAY__PIPELINE__REPLAY_SYNCHRONOUS": "full"}
        config = GatewayConfig.load(write(tmp_path, MINIMAL), env=env)
        assert config.pipeline.replay_synchronous == "full"
        env = {"FEDGATE_GATEWAY__PIPELINE__REPLAY_SYNCHRONOUS": "off"}
        with pytest.raises(ConfigError, match=r"pipeline\.replay_synchronous must be"):
            GatewayConfig.load(write(tmp_path, MINIMAL), env=env)

    def test_replay_window_must_cover_twice_the_skew(self, tmp_path: Path) -> None:
        env = {"FEDGATE_GATEWAY__PIPELINE__REPLAY_WINDOW_S": "400"}
        with pytest.raises(ConfigError, match=r"pipeline\.replay_window_s"):
            GatewayConfig.load(write(tmp_path, MINIMAL), env=env)

    def test_required_options(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"federation\.dir is required"):
            GatewayConfig.load(write(tmp_path, "[pipeline]\nstate_dir = 's'\n"), env={})

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="cannot read"):
            GatewayConfig.load(tmp_path / "absent.toml", env={})


class TestAuditStoreConfig:
    def test_sqlite_is_the_default(self, tmp_path: Path) -> None:
        config = GatewayConfig.load(write(tmp_path, MINIMAL), env={})
        assert config.audit.store == "sqlite"
        assert config.audit_state_path is None  # the SQLite store's own <db>.state

    def test_postgres_with_the_dsn_from_the_environment(self, tmp_path: Path) -> None:
        text = MINIMAL + "[audit]\nstore = 'postgres'\norigin = 'fedgate.cn/gateway/shard-2'\n"
        dsn = "postgresql://gateway:secret@db.internal:5432/fedgate"
        env = {"FEDGATE_GATEWAY__AUDIT__DSN": dsn}
        config = GatewayConfig.load(write(tmp_path, text), env=env)
        assert config.audit.dsn == dsn
        assert config.audit.schema == "fedgate_audit"
        assert config.audit_state_path == (
            tmp_path / "state" / "audit-fedgate.cn-gateway-shard-2.state"
        )
        assert "secret" not in repr(config)

    def test_explicit_schema_and_state_path(self, tmp_path: Path) -> None:
        text = MINIMAL + (
            "[audit]\nstore = 'postgres'\ndsn = 'host=db'\nschema = 'audit_2'\n"
            "state_path = 'local/shard.state'\n"
        )
        config = GatewayConfig.load(write(tmp_path, text), env={})
        assert config.audit.schema == "audit_2"
        assert config.audit_state_path == tmp_path / "local" / "shard.state"

    @pytest.mark.parametrize(
        ("audit", "message"),
        [
            ("store = 'mysql'", r'audit\.store must be "sqlite" or "postgres"'),
            ("store = 'postgres'", r"audit\.dsn is required"),
            ("store = 'postgres'\ndsn = ' '", r"audit\.dsn is required"),
            ("dsn = 'host=db'", r'audit\.dsn is set but audit\.store is "sqlite"'),
            ("store = 'postgres'\ndsn = 'host=db'\npath = 'a.sqlite'", r"audit\.path names"),
            ("store = 'postgres'\ndsn = 'host=db'\nschema = 'a;b'", r"audit\.schema must be"),
            ("store = 'postgres'\ndsn = 'host=db'\nschema = ''", r"audit\.schema must be"),
        ],
    )
    def test_mistakes_name_the_option(self, tmp_path: Path, audit: str, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            GatewayConfig.load(write(tmp_path, f"{MINIMAL}[audit]\n{audit}\n"), env={})

    def test_the_console_reads_a_postgres_store_too(self, tmp_path: Path) -> None:
        text = MINIMAL + (
            "[audit]\nstore = 'postgres'\ndsn = 'host=db'\n[console]\nlisten = '127.0.0.1:8080'\n"
        )
        config = GatewayConfig.load(write(tmp_path, text), env={})
        assert (config.audit.store, config.console.listen) == ("postgres", "127.0.0.1:8080")


class TestSharedState:
    """``[shared]``: one switch for the state several instances share."""

    def test_local_is_the_default(self, tmp_path: Path) -> None:
        config = GatewayConfig.load(write(tmp_path, MINIMAL), env={})
        assert config.shared.store == "local"
        assert config.is_shared is False
        assert config.replay_kind == "memory"

    def test_postgres_implies_the_shared_replay_cache_and_takes_the_audit_dsn(
        self, tmp_path: Path
    ) -> None:
        text = (
            MINIMAL + '[audit]\nstore = "postgres"\nschema = "fg"\n[shared]\nstore = "postgres"\n'
        )
        env = {"FEDGATE_GATEWAY__AUDIT__DSN": "host=db dbname=fedgate"}
        config = GatewayConfig.load(write(tmp_path, text), env=env)
        assert config.is_shared
        assert config.replay_kind == "postgres"
        assert config.shared_dsn == "host=db dbname=fedgate"
        assert config.replay_schema == "fg_replay"
        assert config.shared_schema("quotas") == "fg_quotas"

    def test_its_own_dsn_and_schema_from_the_environment(self, tmp_path: Path) -> None:
        env = {
            "FEDGATE_GATEWAY__SHARED__STORE": "postgres",
            "FEDGATE_GATEWAY__SHARED__DSN": "host=shared dbname=state",
            "FEDGATE_GATEWAY__SHARED__SCHEMA": "centre",
        }
        config = GatewayConfig.load(write(tmp_path, MINIMAL), env=env)
        assert config.shared_dsn == "host=shared dbname=state"
        assert config.shared_schema("outcomes") == "centre_outcomes"
        assert "host=shared" not in repr(config)

    def test_replay_store_postgres_alone_still_works(self, tmp_path: Path) -> None:
        text = MINIMAL + 'replay_store = "postgres"\n[audit]\nstore = "postgres"\ndsn = "x"\n'
        config = GatewayConfig.load(write(tmp_path, text), env={})
        assert (config.replay_kind, config.is_shared) == ("postgres", False)

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ('[shared]\nstore = "redis"\n', r'shared\.store must be "local" or "postgres"'),
            ('[shared]\ndsn = "host=db"\n', r'shared\.dsn is set but shared\.store is "local"'),
            ('[shared]\nstore = "postgres"\n', r"shared\.dsn is required"),
            ('[shared]\nstore = "postgres"\ndsn = "x"\nschema = "a-b"\n', r"shared\.schema must"),
            ("[shared]\nstores = 1\n", r"shared\.stores"),
            (
                'replay_store = "memory"\n[shared]\nstore = "postgres"\ndsn = "x"\n',
                r'pipeline\.replay_store = "memory" is not shared',
            ),
            ('replay_store = "postgres"\n', r'pipeline\.replay_store = "postgres" shares'),
        ],
    )
    def test_mistakes_name_the_option(self, tmp_path: Path, text: str, message: str) -> None:
        # ``replay_store`` lines belong to [pipeline]: MINIMAL ends in that section.
        with pytest.raises(ConfigError, match=message):
            GatewayConfig.load(write(tmp_path, MINIMAL + text), env={})
