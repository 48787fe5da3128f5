"""The demo scenario's countermeasure steps: list the fraud number, see it intercepted and the
warning reach the police.

4. Police put the number that called the victim on the shared risk list (a signed request to the
   gateway, appended to the list's own witnessed log).
5. Every bank and carrier node follows the list; the carriers' call/SMS feeds (generated from the
   world) block the number's calls at once, and the carrier whose subscriber it called sends an
   early warning through the gateway. The police side pulls it from its alert stream and it
   becomes a dissuasion task with a 10-minute first-contact deadline (``fedgate warn``).
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from pathlib import Path

from adapters.synth import FraudChain
from fedgate.checkpoint import cosignatures_in, parse_checkpoint
from fedgate.client import FedgateClient
from fedgate.dissuasion import Task, TaskStore, pull_warnings
from fedgate.errors import FedgateError
from fedgate.evidence import witness_verifiers
from fedgate.logs import mask
from fedgate.note import parse_note
from fedgate.types import MemberId
from fedgate.v1 import common_pb2, request_pb2, risklist_pb2

__all__ = ["WARNING_WAIT_S", "run_countermeasures"]

WARNING_WAIT_S = 45.0
"""How long step 6 waits for the first early warning about the listed number."""


async def _list_number(
    client: FedgateClient,
    number: str,
    *,
    officer: common_pb2.Person,
    case: common_pb2.CaseInfo,
    when: str,
) -> bool:
    print(f"\n── 4. {mask(number)} on the shared risk list (all carriers and banks replicate it)")
    request = client.new_request(
        action=risklist_pb2.RiskListAdd(
            category=risklist_pb2.RISK_CATEGORY_PHONE_NUMBER,
            value=number,
            reason="冒充客服诈骗来电 / called a victim posing as customer service",
        ),
        officer=officer,
        target=MemberId("gateway"),
        case=case,
        legal_document=common_pb2.LegalDocument(
            kind=common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER, number=f"反制〔{when}〕2号"
        ),
        purpose="技术反制：拦截涉诈号码 / intercept the fraud number's calls and SMS",
        urgency=common_pb2.URGENCY_URGENT,
    )
    try:
        answer = await client.ask(request)
    except FedgateError as exc:
        print(f"  refused: {exc.message}")
        return False
    response = answer.response
    if response.status == request_pb2.RESPONSE_STATUS_OK:
        result = response.risk_list_change
        entry = result.change.entry
        print(
            f"  listed ✓ change #{result.list_index} of {result.list_origin}, by "
            f"{entry.issuing_agency}, until {entry.expires_at.ToDatetime():%Y-%m-%d} UTC; "
            "the gateway signed a new checkpoint and the witnesses cosign it"
        )
        return True
    if "already listed" in response.detail:
        print(f"  already listed ✓ ({response.detail})")
        return True
    print(f"  not listed: {response.detail}")
    return False


def _print_task(task: Task) -> None:
    what = {3: "its SMS was blocked", 4: "its call was blocked"}.get(
        task.risk_level, "they called it back"
    )
    print(
        f"  early warning ✓ from {task.source_agency}: {mask(task.subject)} was contacted by "
        f"{mask(task.flagged)} (risk {task.risk_level}): {what}"
    )
    print(
        f"  dissuasion task {task.task_id}: first contact due by {task.deadline:%H:%M:%S} UTC "
        f"({(task.deadline - task.received_at) // timedelta(minutes=1)} min)"
    )
    print(f"  $ fedgate warn claim {task.task_id} --officer <id>   # then: fedgate warn record …")


async def _print_cosigned(client: FedgateClient) -> None:
    """Who has cosigned the risk list's latest checkpoint (split views need them all fooled)."""
    try:
        note = await client.risk_checkpoint()
        cp = parse_checkpoint(parse_note(note).text)
        names = sorted(cosignatures_in(note, witness_verifiers(client.registry)))
    except FedgateError as exc:
        print(f"  risk list checkpoint unavailable: {exc.message}")
        return
    print(
        f"  risk list checkpoint: {cp.size} change(s), cosigned by "
        f"{', '.join(names) if names else 'no witness yet'}"
    )


async def _await_warning(client: FedgateClient, store: TaskStore, number: str) -> bool:
    print(f"\n── 5. Interception at the carriers; the warning reaches {client.member_id}")
    deadline = time.monotonic() + WARNING_WAIT_S
    while time.monotonic() < deadline:
        try:
            await pull_warnings(client, store, wait_s=1.0)
        except FedgateError as exc:
            print(f"  cannot read the alert stream: {exc.message}")
            return False
        tasks = [t for t in store.tasks() if t.flagged == number]
        if tasks:
            _print_task(tasks[-1])
            await _print_cosigned(client)
            return True
        await asyncio.sleep(0.5)
    print(f"  no early warning about {mask(number)} within {WARNING_WAIT_S:g} s")
    return False


async def run_countermeasures(
    client: FedgateClient,
    chain: FraudChain,
    *,
    officer: common_pb2.Person,
    case: common_pb2.CaseInfo,
    when: str,
    state: Path,
) -> list[tuple[str, bool]]:
    """Steps 4 and 5 (see the module); returns (name, passed) for each."""
    number = chain.fraud_numbers[0].number
    steps = [
        ("risk list", await _list_number(client, number, officer=officer, case=case, when=when))
    ]
    store = TaskStore(state / "police" / "dissuasion.sqlite")
    try:
        steps.append(("warning", await _await_warning(client, store, number)))
    finally:
        store.close()
    return steps
