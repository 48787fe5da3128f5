"""``fedgate chase`` end to end: the command line against the real gateway and bank nodes; the
tree appears as hops are found, then the summary; ``--json`` gives the same as data."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from adapters.synth import FraudChain, World
from fedgate.cli import main
from fedgate.logs import mask
from fedgate.testing import case_number
from tests.adapters._live import Live, live_federation

pytestmark = pytest.mark.asyncio


def argv(live: Live, chain: FraudChain, serial: int, *extra: str) -> list[str]:
    hop = chain.hops[0]
    return [
        "chase",
        "--payer-account", hop.from_account,
        "--payer-name", hop.from_name,
        "--to-account", hop.to_account,
        "--to-name", hop.to_name,
        "--amount", f"{hop.amount_minor / 100:.2f}",
        "--time", hop.ts.isoformat(),
        "--case", case_number(serial),
        "--query-doc", f"穗公(反诈)查字〔2026〕{serial:05d}号",
        "--stop-doc", f"穗公(反诈)止字〔2026〕{serial:05d}号",
        "--application", f"SQ2026{serial:06d}",
        "--officer-id", "440100123",
        "--officer-name", "王伟",
        "--federation", str(live.fed_dir),
        "--endpoint", live.gateway.endpoint,
        *extra,
    ]  # fmt: skip


async def test_the_tree_then_the_summary(
    fed_dir: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = world.chains[0]
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        code = await asyncio.to_thread(main, argv(live, chain, 51))
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    first = chain.hops[0]
    assert lines[1].startswith(f"{first.to_bank} {mask(first.to_account)}")
    assert "stopped ✓" in lines[1]
    for holding in chain.holdings:
        assert any(mask(holding.account) in line and "stopped ✓" in line for line in lines)
    for end in chain.dead_ends:
        label = {"cash": "cash-out", "merchant": "merchant", "outside": "left the federation"}
        assert any(label[end.kind] in line for line in lines)
    assert any(line.startswith("   └─ ") for line in lines)  # the next hops, indented
    summary = "\n".join(lines[lines.index("") :])
    total = sum(h.amount_minor for h in chain.holdings)
    assert f"stopped     ¥{total / 100:,.2f} in {len(chain.holdings)} account(s)" in summary
    assert "time" in summary
    for account in (h.account for h in chain.holdings):
        assert account not in out  # masked


async def test_json(
    fed_dir: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = world.chains[1]
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        code = await asyncio.to_thread(main, argv(live, chain, 52, "--json", "--show-accounts"))
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    stopped = {n["account"]: n["held_minor"] for n in report["nodes"] if n["outcome"] == "stopped"}
    assert stopped == {h.account: h.amount_minor for h in chain.holdings}
    assert report["traced_minor"] == chain.hops[0].amount_minor
    assert report["stopped_minor"] + report["lost_minor"] == report["traced_minor"]


async def test_a_bad_amount_is_a_usage_error(
    fed_dir: Path, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chain = world.chains[0]
    async with live_federation(fed_dir, world, tmp_path / "live") as live:
        args = argv(live, chain, 53)
        args[args.index("--amount") + 1] = "-5"
        with pytest.raises(SystemExit) as info:
            await asyncio.to_thread(main, args)
    assert info.value.code == 2
    assert "argument --amount: '-5' is not an amount" in capsys.readouterr().err
