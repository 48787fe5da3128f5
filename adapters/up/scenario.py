"""The demo scenario a newcomer follows: a victim calls, the money is stopped, the number cut.

1. The victim's report: who, which account, how much, which number called them.
2. The chase (``fedgate.chase``): from the victim's transfer, hop by hop across the banks,
   every account still holding the victim's money stopped, branches in parallel, dead ends
   (cash, merchants, banks outside the federation) reported; printed live as a tree.
3. The registered owner of the number that called the victim, at its carrier.
4. The suspension of that number.
4. The calling number on the shared risk list (``adapters.up.countermeasures``).
5. Its calls intercepted at the carriers; the early warning reaching the police as a task.
6. ``fedgate audit verify`` over the gateway's log.

Each answer is printed as the police side receives it: verified signature, binding, the
gateway's countersignature and the audit receipt.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from adapters.synth import FraudChain, World, victim_transfer
from adapters.up.countermeasures import run_countermeasures
from fedgate.chase import Authority, ChaseEngine
from fedgate.client import FedgateClient
from fedgate.commands._exit import ExitCode, answer_outcome, failure_outcome
from fedgate.commands.chase import LiveTree, render_summary
from fedgate.errors import FedgateError
from fedgate.logs import mask
from fedgate.render import render_text
from fedgate.types import MemberId
from fedgate.v1 import carrier_pb2, common_pb2, request_pb2
from fedgate.validate import resident_id_check_digit

__all__ = ["ScenarioResult", "run_scenario"]

POLICE = MemberId("police.gd.afc")


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    """Which steps passed; ``ok`` only if all did."""

    steps: tuple[tuple[str, bool], ...]

    @property
    def ok(self) -> bool:
        return all(passed for _, passed in self.steps)


def _officer() -> common_pb2.Person:
    first17 = "44010619850312041"
    return common_pb2.Person(
        id="440100123",
        name="李明",
        id_number=first17 + resident_id_check_digit(first17),
        phone="13800138000",
        role=common_pb2.ROLE_POLICE_INVESTIGATOR,
    )


def _case(chain: FraudChain, when: str) -> common_pb2.CaseInfo:
    return common_pb2.CaseInfo(
        case_number=f"A440100000000{when}{chain.index + 1:05d}",
        case_type=common_pb2.CASE_TYPE_TELECOM_FRAUD,
        reason="冒充客服诈骗 / impersonating customer service",
    )


def _pick_chain(world: World, state: Path) -> FraudChain:
    """A chain the scenario has not used yet in this world (each run stops a new account)."""
    marker = state / "scenario-runs"
    runs = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(runs + 1))
    return world.chains[runs % len(world.chains)]


async def _step(client: FedgateClient, title: str, request: request_pb2.Request) -> bool:
    """Submit ``request`` and print the outcome as ``fedgate query``/``order`` would; True if
    the verified answer is OK."""
    print(f"\n── {title}")
    try:
        outcome = answer_outcome(await client.ask(request))
    except (FedgateError, ValueError) as exc:
        outcome = failure_outcome(exc, request.request_id)
    out, err = render_text(outcome, registry=client.registry)
    print(out, end="")
    if err:
        print(err, end="", file=sys.stderr)
    return outcome.exit_code == ExitCode.OK


async def _chase(
    client: FedgateClient,
    title: str,
    chain: FraudChain,
    officer: common_pb2.Person,
    case: common_pb2.CaseInfo,
    when: str,
) -> bool:
    """Run the chase, printing the tree live and the summary; True if every account holding
    the victim's money was stopped."""
    print(f"\n── {title}")
    authority = Authority(
        officer=officer,
        case=case,
        query_document=common_pb2.LegalDocument(
            kind=common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, number=f"查询〔{when}〕2号"
        ),
        stop_document=common_pb2.LegalDocument(
            kind=common_pb2.LEGAL_DOCUMENT_KIND_STOP_PAYMENT_NOTICE, number=f"止付〔{when}〕1号"
        ),
        victim_application=f"报案回执 {case.case_number}",
    )
    transfer = victim_transfer(chain)
    tree = LiveTree(sys.stdout, unmasked=False)
    report = await ChaseEngine(client=client, authority=authority, on_event=tree.update).run(
        transfer
    )
    for line in render_summary(report):
        print(line)
    return bool(report.stopped) and report.unresolved_minor == 0


async def run_scenario(
    *,
    federation_dir: Path,
    world: World,
    state: Path,
    audit_source: Sequence[str],
    endpoint: str | None = None,
) -> ScenarioResult:
    """Run the six steps against a running federation; print each; return what passed.
    ``audit_source`` names the log for ``fedgate audit verify`` (``--db FILE``, or ``--pg DSN
    --schema S`` for every shard of several instances)."""
    chain = _pick_chain(world, state)
    victim, hop = chain.victim, chain.hops[0]
    caller = chain.fraud_numbers[0]
    when = f"{world.now:%Y%m}"
    steps: list[tuple[str, bool]] = []
    print("\n══ Scenario: a fraud victim calls the anti-fraud centre")
    print(
        f"  victim {victim.name[0]}** ({mask(victim.phone)}) was called by {mask(caller.number)}"
        f" ({caller.carrier_id}) posing as customer service, then transferred"
        f" ¥{hop.amount_minor / 100:,.2f} from {mask(victim.account_number)} ({victim.bank_id})"
        f" to {mask(hop.to_account)} ({hop.to_bank}) at {hop.ts:%H:%M:%S} UTC."
    )
    officer = _officer()
    case = _case(chain, when)
    async with FedgateClient.from_federation(federation_dir, POLICE, endpoint=endpoint) as client:
        title = "1. The chase: follow the money from the victim's transfer and stop it"
        steps.append(("chase", await _chase(client, title, chain, officer, case, when)))

        notice = common_pb2.LegalDocument(
            kind=common_pb2.LEGAL_DOCUMENT_KIND_QUERY_NOTICE, number=f"查询〔{when}〕1号"
        )
        request = client.new_request(
            action=carrier_pb2.SubscriberQuery(phone_number=caller.number),
            officer=officer,
            target=caller.carrier_id,
            case=case,
            legal_document=notice,
            purpose="查明诈骗电话实名登记人 / who registered the number that called the victim",
            urgency=common_pb2.URGENCY_URGENT,
        )
        title = f"2. Registered owner of the calling number at {caller.carrier_id}"
        steps.append(("subscriber", await _step(client, title, request)))

        request = client.new_request(
            action=carrier_pb2.NumberSuspendOrder(
                phone_number=caller.number, reason="涉嫌电信网络诈骗 / used in telecom fraud"
            ),
            officer=officer,
            target=caller.carrier_id,
            case=case,
            legal_document=common_pb2.LegalDocument(
                kind=common_pb2.LEGAL_DOCUMENT_KIND_COUNTERMEASURE_ORDER,
                number=f"反制〔{when}〕1号",
            ),
            purpose="停机涉诈号码 / suspend the fraud number",
            urgency=common_pb2.URGENCY_URGENT,
        )
        title = f"3. Suspension of the calling number at {caller.carrier_id}"
        steps.append(("suspend", await _step(client, title, request)))
        # 4–5: the number on the shared risk list, intercepted, the warning at the police
        steps += await run_countermeasures(
            client, chain, officer=officer, case=case, when=when, state=state
        )

    print("\n── 6. fedgate audit verify: every entry, signature, checkpoint and proof")
    command = [
        sys.executable,
        "-m",
        "fedgate.cli",
        "audit",
        "verify",
        *audit_source,
        "--federation",
        str(federation_dir),
    ]
    shown = ["--pg", "DSN", *audit_source[2:]] if audit_source[0] == "--pg" else audit_source
    print("  $ fedgate audit verify", *shown, "--federation", federation_dir)
    verifier = await asyncio.create_subprocess_exec(*command)
    steps.append(("audit verify", await verifier.wait() == 0))
    result = ScenarioResult(steps=tuple(steps))
    print(
        "\n══ Scenario",
        "succeeded" if result.ok else "FAILED",
        "·",
        ", ".join(f"{name} {'✓' if passed else '✗'}" for name, passed in steps),
    )
    return result
