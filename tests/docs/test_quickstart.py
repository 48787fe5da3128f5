"""docs/quickstart.md as written: every ``sh`` block, in order, against a federation of its own.

The first block (``make run``) is replaced by ``fedgate up --no-scenario`` in the foreground on
free ports below 32768; a block marked ``<!-- quickstart-test: skip (why) -->`` is not run. The
blocks run as one bash script with ``set -euo pipefail``, so any non-zero exit fails the test
unless the doc marks it as expected (``|| test $? -eq N``). The doc's last block, ``fedgate down``,
must end the foreground ``fedgate up`` and every process it started.
"""

from __future__ import annotations

import os
import queue
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapters.up import check_ports, stop_pids
from fedgate.errors import FedgateError

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "docs" / "quickstart.md"
_BLOCK = re.compile(r"(?:<!-- quickstart-test: (?P<mark>.*?)-->\n)?```sh\n(?P<body>.*?)```", re.S)
_MEMBERS = 12


def blocks(text: str) -> list[tuple[str, str]]:
    """Each ``sh`` block of ``text`` with its quickstart-test mark ('' when unmarked)."""
    return [(m["mark"] or "", m["body"]) for m in _BLOCK.finditer(text)]


# Whole federations on ports from 20000 up (``fedgate up``'s range, which ``free_port`` avoids):
# every module that starts one runs on the same test process, one after the other, so two
# never take the same ports (``make test`` runs two processes).
pytestmark = pytest.mark.xdist_group("federations")


def _free_base() -> int:
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(22000, 30000)
        ports = [base + i for i in range(_MEMBERS)] + [base + 1000 + i for i in range(_MEMBERS)]
        try:
            check_ports(f"127.0.0.1:{p}" for p in ports)
        except FedgateError:
            continue
        return base
    raise RuntimeError("no free base port below 32768")


class _Output:
    """A process's output, read line by line by a thread (a ``select`` on the pipe would miss
    lines already taken into the text wrapper's buffer)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self._lines: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self._stream:
            self._lines.put(line)
        self._lines.put("")

    def wait_for(self, marker: str, timeout: float) -> str:
        """Lines until one contains ``marker``; all of them."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if not line:
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
        raise AssertionError(f"no {marker!r} from fedgate up:\n" + "".join(seen)[-4000:])

    def close(self) -> None:
        """After the process ended: let the reader finish, then close the pipe."""
        self.thread.join(timeout=30)
        self._stream.close()


def _leftovers(marker: str) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True)
    return [line for line in ps.stdout.splitlines() if marker in line and "ps -eo" not in line]


class TestTheDocument:
    def test_the_process_count_is_right(self) -> None:
        """`fedgate up` runs the gateway, every bank and carrier node and every witness."""
        from fedgate.federation import DEFAULT_MEMBERS, MemberKind

        runs = (MemberKind.GATEWAY, MemberKind.BANK, MemberKind.CARRIER)
        served = [m for m in DEFAULT_MEMBERS if m.kind in runs or "witness" in m.roles]
        words = {10: "ten", 11: "eleven", 12: "twelve"}
        assert f"starts {words[len(served)]} processes" in QUICKSTART.read_text(encoding="utf-8")

    def test_the_first_block_is_make_run_and_the_last_stops_the_federation(self) -> None:
        found = blocks(QUICKSTART.read_text(encoding="utf-8"))
        assert found[0][1].strip() == "make run"
        assert "replaced by" in found[0][0]
        assert found[-1][0].startswith("skip") or "fedgate down" in found[-1][1]
        runnable = [body for mark, body in found[1:] if not mark.startswith("skip")]
        assert "fedgate down --state state" in runnable[-1]


@pytest.mark.slow
class TestQuickstart:
    def test_every_block_runs_in_order(self, tmp_path: Path) -> None:
        found = blocks(QUICKSTART.read_text(encoding="utf-8"))
        work = tmp_path / "repo"
        work.mkdir()
        (work / ".venv").symlink_to(REPO / ".venv")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDGATE_")}
        env["PYTHONUNBUFFERED"] = "1"
        up = subprocess.Popen(
            [sys.executable, "-m", "fedgate.cli", "up", "--no-scenario", "--state", "state",
             "--base-port", str(_free_base())],
            cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        output = _Output(up)
        try:
            started = output.wait_for("keeps running", timeout=300)
            assert "export PATH=" in started or ".venv/bin" in env.get("PATH", "")
            script = "set -euo pipefail\n" + "\n".join(
                body for mark, body in found[1:] if not mark.startswith("skip")
            )
            run = subprocess.run(
                ["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True,
                timeout=600, check=False,
            )  # fmt: skip
            report = f"stdout:\n{run.stdout[-6000:]}\nstderr:\n{run.stderr[-6000:]}"
            assert run.returncode == 0, report
            # what the doc says happens, happens
            assert re.search(r"repeat of\s+[0-9a-f-]{36}", run.stdout), report
            assert "legal_document.accepted_kind" in run.stderr, report
            assert (work / "stop-payment.json").exists()
            # the doc's `fedgate down` ended the foreground `fedgate up` and all it started
            assert up.wait(timeout=60) == 0
            assert _leftovers(str(work)) == []
        finally:
            if up.poll() is None:
                up.send_signal(signal.SIGTERM)
                up.wait(timeout=60)
            stop_pids(work / "state")
            output.close()
