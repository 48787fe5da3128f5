"""The SDK installs lean: the ``fedgate`` wheel without extras, in a fresh virtual environment,
pulls in only gRPC, protobuf, cryptography and the google.rpc messages, and queries a real
federation (a gateway and a bank node on loopback mTLS) from there."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fedgate.testing import free_port
from fedgate.types import MemberId
from gateway.config import (
    FederationConfig,
    GatewayConfig,
    PipelineConfig,
    RoutingConfig,
    ServerConfig,
)
from gateway.server import Gateway

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SDK_ONLY = {"fedgate", "grpcio", "protobuf", "cryptography", "cffi", "pycparser"}
SDK_ONLY |= {"googleapis-common-protos", "pynacl", "pip", "setuptools", "typing-extensions"}
NOT_IN_THE_SDK = {"pycasbin", "opentelemetry-sdk", "starlette", "psycopg", "faker", "jinja2"}

QUERY = """
import asyncio, json, sys
from datetime import UTC, datetime
from pathlib import Path
from fedgate.client import FedgateClient
from fedgate.testing import valid_request
from fedgate.types import MemberId

async def main() -> None:
    fed, endpoint, account = sys.argv[1:4]
    request = valid_request("account_holder", now=datetime.now(UTC))
    request.account_holder.account_number = account
    async with FedgateClient.from_federation(
        Path(fed), MemberId("police.gd.afc"), endpoint=endpoint
    ) as client:
        answer = await client.ask(request, timeout=15)
    print(json.dumps({"responder": answer.response.responder,
                      "leaf": answer.receipt.leaf_index}))

asyncio.run(main())
"""


def _run(args: list[str], timeout: float) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args[:4]}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the fedgate wheel installed without extras (pip may use its cache)."""
    root = tmp_path_factory.mktemp("sdk")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("fedgate", "gateway", "adapters", "policies"):
        shutil.copytree(
            REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    _run(
        [
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--no-build-isolation", "--disable-pip-version-check",
            "-w", str(root / "dist"), str(source),
        ],
        timeout=300,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("fedgate-*.whl")
    _run([sys.executable, "-m", "venv", str(root / "venv")], timeout=120)
    python = root / "venv" / "bin" / "python"
    _run(
        [
            str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            str(wheel),
        ],
        timeout=600,
    )  # fmt: skip
    return python


@pytest.fixture
async def federation(fed_dir: Path, bank_node: Any, tmp_path: Path) -> AsyncIterator[str]:
    listen = f"127.0.0.1:{free_port()}"
    node = await bank_node("bank.icbc", gateway_endpoint=listen)
    config = GatewayConfig(
        federation=FederationConfig(dir=fed_dir),
        pipeline=PipelineConfig(state_dir=tmp_path / "gateway"),
        server=ServerConfig(listen=listen, grace_period_s=1.0),
        routing=RoutingConfig(timeout_s=5.0, endpoints={MemberId("bank.icbc"): node.endpoint}),
    )
    gateway = await Gateway.start(config)
    try:
        yield gateway.endpoint
    finally:
        await gateway.stop(0.5)


def test_the_sdk_installs_with_grpc_protobuf_and_cryptography_only(sdk_python: Path) -> None:
    listed = json.loads(_run([str(sdk_python), "-m", "pip", "list", "--format=json"], timeout=60))
    installed = {p["name"].lower().replace("_", "-") for p in listed}
    assert installed <= SDK_ONLY, installed - SDK_ONLY
    assert not installed & NOT_IN_THE_SDK


async def test_the_installed_sdk_queries_a_federation(
    sdk_python: Path, federation: str, fed_dir: Path, kit: Any
) -> None:
    _, hop = kit.hop_into("bank.icbc")
    proc = await asyncio.create_subprocess_exec(
        str(sdk_python),
        "-c",
        QUERY,
        str(fed_dir),
        federation,
        hop.to_account,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd="/",  # never this checkout: only the installed wheel
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-3000:]
    answer = json.loads(out.decode().strip().splitlines()[-1])
    assert answer["responder"] == "bank.icbc"
    assert answer["leaf"] > 0


def test_the_police_cli_runs_without_the_sides(sdk_python: Path) -> None:
    fedgate = sdk_python.parent / "fedgate"
    usage = _run([str(fedgate), "--help"], timeout=60)
    for group in ("query", "order", "ticket", "registry"):
        assert group in usage
    # the gateway's and the nodes' groups need their extras: absent, not broken
    for side in ("policy", "audit"):
        assert f"    {side} " not in usage
