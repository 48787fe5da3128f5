"""The one configuration rule (``fedgate.config``): dataclass defaults, one environment rule,
options named in every error, one TOML writer."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import pytest

from fedgate.config import ConfigError, build, dump_toml, read_toml, with_env
from fedgate.errors import InvalidArgument


@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    port: int = 7
    ratio: float = 0.5
    on: bool = False
    where: Path | None = None
    names: tuple[str, ...] = ()
    routes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True, kw_only=True)
class Outer:
    name: str
    home: Path
    inner: Inner = field(default_factory=Inner)


class TestBuild:
    def test_defaults_come_from_the_dataclass(self, tmp_path: Path) -> None:
        got = build(Outer, {"name": "x", "home": "h"}, base=tmp_path)
        assert got == Outer(name="x", home=tmp_path / "h", inner=Inner())

    def test_every_supported_type(self, tmp_path: Path) -> None:
        doc = {
            "name": "x",
            "home": "/abs",
            "inner": {
                "port": 9,
                "ratio": 2,
                "on": True,
                "where": "../w",
                "names": ["a", "b"],
                "routes": {"k": "v"},
            },
        }
        got = build(Outer, doc, base=tmp_path / "conf")
        assert got.home == Path("/abs")
        assert got.inner == Inner(
            port=9,
            ratio=2.0,
            on=True,
            where=tmp_path / "w",
            names=("a", "b"),
            routes=MappingProxyType({"k": "v"}),
        )
        assert build(Outer, {**doc, "inner": {"where": ""}}, base=tmp_path).inner.where is None

    @pytest.mark.parametrize(
        ("doc", "message"),
        [
            ({"home": "h"}, "name is required"),
            ({"name": "x", "home": "h", "inner": {"prot": 1}}, r"unknown option\(s\) inner\.prot"),
            ({"name": "x", "home": "h", "extra": {}}, "unknown config section.* extra"),
            ({"name": "x", "home": "h", "inner": {"port": "1"}}, r"inner\.port must be an integer"),
            ({"name": "x", "home": "h", "inner": {"port": True}}, r"inner\.port must be an int"),
            ({"name": "x", "home": "h", "inner": {"ratio": "x"}}, r"inner\.ratio must be a number"),
            ({"name": "x", "home": "h", "inner": {"on": 1}}, r"inner\.on must be true or false"),
            ({"name": 5, "home": "h"}, "name must be a string"),
            ({"name": "x", "home": ""}, "home must be a path"),
            ({"name": "x", "home": "h", "inner": {"names": "a"}}, r"inner\.names must be a list"),
            ({"name": "x", "home": "h", "inner": {"routes": {"k": 1}}}, "table of strings"),
            ({"name": "x", "home": "h", "inner": 3}, r"\[inner\] must be a table"),
        ],
    )
    def test_mistakes_name_the_option(self, tmp_path: Path, doc: dict, message: str) -> None:
        with pytest.raises(ConfigError, match=message):
            build(Outer, doc, base=tmp_path)

    def test_config_errors_are_invalid_arguments(self) -> None:
        assert issubclass(ConfigError, InvalidArgument)
        assert ConfigError("x").reason == "CONFIG_INVALID"


class TestEnvironment:
    def test_one_rule_for_sections_and_top_level_keys(self) -> None:
        env = {
            "P__NAME": "from env",
            "P__INNER__PORT": "9",
            "P__INNER__NAMES": '["a", "b"]',
            "P__INNER__ROUTES": '{ "bank.icbc" = "127.0.0.1:1" }',
            "P__INNER__ON": "true",
            "Q__NAME": "other prefix",
        }
        merged = with_env({"name": "file", "inner": {"port": 1, "ratio": 3}}, env, "P__")
        assert merged == {
            "name": "from env",
            "inner": {
                "port": 9,
                "ratio": 3,
                "names": ["a", "b"],
                "routes": {"bank.icbc": "127.0.0.1:1"},
                "on": True,
            },
        }

    def test_the_file_mapping_is_not_changed(self) -> None:
        doc = {"inner": {"port": 1}}
        with_env(doc, {"P__INNER__PORT": "2"}, "P__")
        assert doc == {"inner": {"port": 1}}

    def test_malformed_variables_are_named(self) -> None:
        with pytest.raises(ConfigError, match="P__INNER____PORT"):
            with_env({}, {"P__INNER____PORT": "1"}, "P__")
        with pytest.raises(ConfigError, match=r"P__NAME__X: name is not a table"):
            with_env({"name": "x"}, {"P__NAME__X": "1"}, "P__")


class TestFiles:
    def test_read_errors_name_the_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match=r"cannot read the thing .*absent\.toml"):
            read_toml(tmp_path / "absent.toml", what="the thing")
        bad = tmp_path / "bad.toml"
        bad.write_text("a = ", encoding="utf-8")
        with pytest.raises(ConfigError, match=r"bad\.toml is not valid TOML"):
            read_toml(bad, what="the thing")

    def test_dump_reads_back(self, tmp_path: Path) -> None:
        doc = {
            "top": 'quote " and \\ backslash',
            "skipped": None,
            "sec": {"path": tmp_path / "a b", "list": ("x",), "map": MappingProxyType({"k": 1})},
        }
        text = dump_toml(doc, header="line one\nline two")
        assert text.startswith("# line one\n# line two\n")
        assert tomllib.loads(text) == {
            "top": 'quote " and \\ backslash',
            "sec": {"path": str(tmp_path / "a b"), "list": ["x"], "map": {"k": 1}},
        }
