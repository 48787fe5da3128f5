"""The staff console on a running agency node: the real ``StaffQueue`` and the serving task.

``NodeStaffQueue`` drives the node's durable queue (``adapters.queue.RequestStore``) in-process,
with the same rules as ``StaffService``: only staff listed in the node's configuration, only the
claimant answers, every answer bound to its request and signed with the agency key.
``start_staff_console`` serves the console in the node's event loop (``console_task`` wraps it
as a node background job)::

    console = await start_staff_console(node, port=8101)
    ...
    await console.stop()

Contract:

- ``preview`` MUST NOT change anything: it asks the backend only read actions (the query itself
  when it is a read, else a look-up of the order's subject).
- ``confirm`` asks the backend inside the queue's answer transaction, after the claim is
  checked, so an order is executed only by the claimant of a still-open query.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Protocol

from adapters._answering import ask_backend
from adapters.answers import check_staff_status, refusal
from adapters.appeals import NodeAppealDesk
from adapters.console import Preview, QueueCase, StaffConsole
from adapters.node import AgencyBackend, AgencyNode
from adapters.queue import ANSWERED, OPEN_STATES, Entry
from adapters.staff import QueueHost, answer_claimed
from fedgate.actions import IDEMPOTENT_READS, ORDER_ACTIONS
from fedgate.audit_entry import EventEntry
from fedgate.envelope import decode_request, decode_response
from fedgate.errors import InvalidArgument, NotFound, PermissionRefused, RuleViolated
from fedgate.types import MemberId
from fedgate.v1 import bank_pb2, carrier_pb2, request_pb2
from fedgate.web.app import AuditHook, log_audit_hook
from fedgate.web.auth import UserStore
from fedgate.web.serve import EmbeddedServer

__all__ = [
    "ConsoleHost",
    "NodeStaffQueue",
    "RunningConsole",
    "console_task",
    "start_staff_console",
]

log = logging.getLogger("fedgate.adapters.console")

_MAX_OPEN = 2000
_HISTORY_SCAN = 5000


class ConsoleHost(QueueHost, Protocol):
    """A node hosting the queue, with the backend that can look things up."""

    @property
    def backend(self) -> AgencyBackend: ...


def _case(entry: Entry) -> QueueCase:
    request = decode_request(entry.request_envelope.body)
    status, detail = 0, ""
    signed = entry.signed_response
    if signed is not None:
        response = decode_response(signed.body)
        status, detail = int(response.status), response.detail
    assert entry.deadline is not None
    return QueueCase(
        request_id=entry.request_id,
        request=request,
        action=entry.action,
        state=entry.state,
        received_at=entry.received_at,
        deadline=entry.deadline,
        claimed_by=entry.claimed_by,
        answered_by=entry.answered_by,
        answered_at=entry.answered_at,
        status=status,
        detail=detail,
    )


def _lookup(request: request_pb2.Request, action: str) -> request_pb2.Request | None:
    """A read-only query about an order's subject: the account's holder, the number's owner."""
    if action not in ORDER_ACTIONS:
        return None
    order = getattr(request, action)
    account = getattr(order, "account_number", "")
    if account:
        return request_pb2.Request(
            account_holder=bank_pb2.AccountHolderQuery(account_number=account)
        )
    number = getattr(order, "phone_number", "") or getattr(order, "sender", "")
    if number:
        return request_pb2.Request(subscriber=carrier_pb2.SubscriberQuery(phone_number=number))
    return None


class NodeStaffQueue:
    """``StaffQueue`` over a running node (``AgencyNode`` satisfies ``ConsoleHost``)."""

    def __init__(self, host: ConsoleHost) -> None:
        self._host = host

    @property
    def member_id(self) -> MemberId:
        return self._host.member_id

    def member_name(self, member_id: str, lang: str) -> str:
        member = self._host.registry.find(member_id)
        if member is None:
            return member_id
        return f"{member.name_en if lang == 'en' else member.name_zh}（{member_id}）"

    def _staff(self, staff_id: str) -> None:
        if staff_id not in self._host.staff:
            raise PermissionRefused(f"{staff_id} is not stationed staff of {self.member_id}")

    async def list_open(self) -> Sequence[QueueCase]:
        host = self._host
        await host.expire_due()

        def scan() -> list[Entry]:
            found: list[Entry] = []
            token = ""
            while len(found) < _MAX_OPEN:
                entries, token = host.store.list(OPEN_STATES, page_size=500, page_token=token)
                found.extend(entries)
                if not token:
                    break
            return found

        return tuple(_case(e) for e in await host.run_blocking(scan))

    async def get(self, request_id: str) -> QueueCase:
        await self._host.expire_due()
        entry = await self._host.run_blocking(lambda: self._host.store.get(request_id))
        if entry is None or not entry.manual:
            raise NotFound(f"no queued request {request_id} at {self.member_id}")
        return _case(entry)

    async def claim(self, request_id: str, staff_id: str) -> QueueCase:
        self._staff(staff_id)
        await self._host.expire_due()
        entry = await self._host.run_blocking(lambda: self._host.store.claim(request_id, staff_id))
        return _case(entry)

    async def release(self, request_id: str, staff_id: str) -> QueueCase:
        self._staff(staff_id)
        entry = await self._host.run_blocking(
            lambda: self._host.store.release(request_id, staff_id)
        )
        return _case(entry)

    async def preview(self, request_id: str, staff_id: str) -> Preview:
        self._staff(staff_id)
        case = await self.get(request_id)
        if case.claimed_by != staff_id:
            raise RuleViolated(f"request {request_id} is not claimed by {staff_id}")
        backend = self._host.backend
        if case.action in IDEMPOTENT_READS and case.action in backend.actions:
            response = await self._ask(case.request)
            return Preview("result", response)
        lookup = _lookup(case.request, case.action)
        if lookup is not None and lookup.WhichOneof("action") in backend.actions:
            return Preview("context", await self._ask(lookup))
        return Preview("none")

    async def _ask(self, request: request_pb2.Request) -> request_pb2.Response:
        host = self._host

        def run() -> request_pb2.Response:
            return ask_backend(host.backend, request, now=host.now())

        return await host.run_blocking(run)

    async def confirm(self, request_id: str, staff_id: str) -> QueueCase:
        host = self._host

        def decide(entry: Entry) -> request_pb2.Response:
            request = decode_request(entry.request_envelope.body)
            if entry.action not in host.backend.actions:
                raise InvalidArgument(f"{self.member_id}'s system does not serve {entry.action}")
            return ask_backend(host.backend, request, now=host.now())

        return await self._answer(request_id, staff_id, decide)

    async def answer(
        self, request_id: str, staff_id: str, answer: request_pb2.Response
    ) -> QueueCase:
        check_staff_status(answer)
        return await self._answer(request_id, staff_id, lambda _: answer)

    async def reject(self, request_id: str, staff_id: str, reason: str) -> QueueCase:
        refused = refusal(reason)
        return await self._answer(request_id, staff_id, lambda _: refused)

    async def _answer(
        self,
        request_id: str,
        staff_id: str,
        decide: Callable[[Entry], request_pb2.Response],
    ) -> QueueCase:
        self._staff(staff_id)
        await self._host.expire_due()
        return _case(await answer_claimed(self._host, request_id, staff_id, decide))

    async def history(self, staff_id: str, *, limit: int = 200) -> Sequence[QueueCase]:
        host = self._host

        def scan() -> list[Entry]:
            # The store has no index by staff member: scan answered items (bounded).
            mine: list[Entry] = []
            token = ""
            seen = 0
            while seen < _HISTORY_SCAN:
                entries, token = host.store.list((ANSWERED,), page_size=500, page_token=token)
                seen += len(entries)
                mine.extend(e for e in entries if e.answered_by == staff_id)
                if not token:
                    break
            return mine

        entries = await host.run_blocking(scan)
        entries.sort(key=lambda e: e.answered_at or e.received_at, reverse=True)
        return tuple(_case(e) for e in entries[:limit])


class RunningConsole:
    """A staff console being served: its ``url``; ``stop`` it before the node stops."""

    def __init__(self, server: EmbeddedServer, users: UserStore, console: StaffConsole) -> None:
        self.server = server
        self.console = console
        self._users = users

    @property
    def url(self) -> str:
        return self.server.url

    async def wait(self) -> None:
        await self.server.wait()

    async def stop(self) -> None:
        await self.server.stop()
        self._users.close()


def gateway_audit_hook(node: AgencyNode) -> AuditHook:
    """An audit hook that appends each console event to the gateway's audit log, signed by the
    agency (``EventService``). If the gateway cannot log it, the hook raises and the console
    refuses the action it was auditing: nothing happens unlogged."""

    async def record(entry: EventEntry) -> None:
        await node.report_sender().client.record_event(
            kind=entry.kind, actor=entry.actor, at=entry.at, detail=entry.detail
        )
        log.info("console event %s by %s recorded in the audit log", entry.kind, entry.actor)

    return record


async def start_staff_console(
    node: AgencyNode,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    users_dir: Path | None = None,
    audit_hook: AuditHook = log_audit_hook,
    secure_cookies: bool = False,
    poll_seconds: float = 5.0,
) -> RunningConsole:
    """Serve ``node``'s staff console on ``host:port`` in the running loop (``port`` 0: any
    free port). Accounts come from ``users.sqlite`` in ``users_dir`` (default: the node's state
    directory, where ``fedgate staff add-user --state`` writes). Raises ``AgencyUnavailable``
    when the address cannot be bound."""
    state_dir = Path(node.config.state_dir)
    users = UserStore.in_state_dir(users_dir or state_dir)
    try:
        console = StaffConsole(
            queue=NodeStaffQueue(node),
            users=users,
            state_dir=state_dir,
            audit_hook=audit_hook,
            clock=node.now,
            secure_cookies=secure_cookies,
            poll_seconds=poll_seconds,
            appeals=NodeAppealDesk(node),
        )
        server = EmbeddedServer(console.app, host=host, port=port)
        await server.start()
    except BaseException:
        users.close()
        raise
    log.info("staff console of %s at %s", node.member_id, server.url)
    return RunningConsole(server, users, console)


def console_task(
    *, on_ready: Callable[[str], None] | None = None, **options: Any
) -> Callable[[AgencyNode], Coroutine[Any, Any, None]]:
    """A node background job (``AgencyNode(background=[...])``) serving the staff console
    until cancelled; ``options`` are those of ``start_staff_console``; ``on_ready`` gets the
    URL."""

    async def job(node: AgencyNode) -> None:
        running = await start_staff_console(node, **options)
        try:
            if on_ready is not None:
                on_ready(running.url)
            await running.wait()
        finally:
            await running.stop()

    return job
