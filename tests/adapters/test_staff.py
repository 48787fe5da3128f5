"""StaffService and ``fedgate staff``: the agency's own staff list, claim, answer and reject
queued queries; the node signs with the staff id in answered_by; nobody else gets in."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from adapters.staff import STAFF_METADATA
from fedgate.commands import staff as staff_command
from fedgate.logs import mask
from fedgate.v1 import bank_pb2, request_pb2, staff_service_pb2, ticket_pb2

ZHANG = (("x-fedgate-staff", "icbc.zhang"),)
LI = (("x-fedgate-staff", "icbc.li"),)


async def queued(kit: Any, node: Any, action: str = "account_holder") -> tuple[Any, Any]:
    request = kit.request(action)
    envelope = kit.sign(request)
    reply = await kit.link(node).handle(envelope)
    assert reply.HasField("queued")
    return request, envelope


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


class TestStaffService:
    async def test_staff_claim_and_answer_with_a_typed_result(
        self, kit: Any, bank_node: Any
    ) -> None:
        node = await bank_node("bank.icbc", manual={"account_holder"})
        request, envelope = await queued(kit, node)
        staff = kit.link(node, as_member="bank.icbc").staff
        listed = await staff.ListQueue(staff_service_pb2.ListQueueRequest(), metadata=ZHANG)
        (item,) = listed.items
        assert (item.request_id, item.action, item.requesting_agency) == (
            request.request_id,
            "account_holder",
            "police.gd.afc",
        )
        assert item.case == request.case
        assert item.officer == request.officer
        assert item.state == ticket_pb2.TICKET_STATE_WAITING
        assert item.remind_at.ToDatetime() < item.deadline.ToDatetime()

        claim = staff_service_pb2.ClaimQueueItemRequest(request_id=request.request_id)
        claimed = await staff.ClaimQueueItem(claim, metadata=ZHANG)
        assert claimed.item.claimed_by == "icbc.zhang"
        error = await refused(staff.ClaimQueueItem(claim, metadata=LI))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "claimed by icbc.zhang" in (error.details() or "")

        answer = request_pb2.Response(
            status=request_pb2.RESPONSE_STATUS_OK,
            account_holder=bank_pb2.AccountHolderResult(
                account_number=request.account_holder.account_number, account_name="张三"
            ),
        )
        wrong = request_pb2.Response(
            status=request_pb2.RESPONSE_STATUS_OK,
            transactions=bank_pb2.TransactionsResult(account_number="1"),
        )
        error = await refused(
            staff.AnswerQueueItem(
                staff_service_pb2.AnswerQueueItemRequest(
                    request_id=request.request_id, answer=wrong
                ),
                metadata=ZHANG,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "account_holder result" in (error.details() or "")
        error = await refused(
            staff.AnswerQueueItem(
                staff_service_pb2.AnswerQueueItemRequest(
                    request_id=request.request_id, answer=answer
                ),
                metadata=LI,
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

        done = await staff.AnswerQueueItem(
            staff_service_pb2.AnswerQueueItemRequest(request_id=request.request_id, answer=answer),
            metadata=ZHANG,
        )
        response = kit.verify_signed(envelope, done.response)
        assert response.answered_by == "icbc.zhang"
        assert response.account_holder.account_name == "张三"

        result = await kit.link(node).get_result(request.request_id)
        assert result.state == ticket_pb2.TICKET_STATE_ANSWERED
        assert result.response.SerializeToString() == done.response.SerializeToString()
        redelivered = await kit.link(node).handle(envelope)
        assert redelivered.response.SerializeToString() == done.response.SerializeToString()

    async def test_release_and_reject(self, kit: Any, bank_node: Any) -> None:
        node = await bank_node("bank.icbc", manual={"account_holder"})
        request, envelope = await queued(kit, node)
        staff = kit.link(node, as_member="bank.icbc").staff
        rid = request.request_id
        await staff.ClaimQueueItem(
            staff_service_pb2.ClaimQueueItemRequest(request_id=rid), metadata=ZHANG
        )
        released = await staff.ReleaseQueueItem(
            staff_service_pb2.ReleaseQueueItemRequest(request_id=rid), metadata=ZHANG
        )
        assert released.item.state == ticket_pb2.TICKET_STATE_WAITING
        await staff.ClaimQueueItem(
            staff_service_pb2.ClaimQueueItemRequest(request_id=rid), metadata=LI
        )
        error = await refused(
            staff.RejectQueueItem(
                staff_service_pb2.RejectQueueItemRequest(request_id=rid, reason=" "), metadata=LI
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        rejected = await staff.RejectQueueItem(
            staff_service_pb2.RejectQueueItemRequest(
                request_id=rid, reason="文书不清晰，请重新发送"
            ),
            metadata=LI,
        )
        response = kit.verify_signed(envelope, rejected.response)
        assert response.status == request_pb2.RESPONSE_STATUS_REFUSED
        assert (response.detail, response.answered_by) == ("文书不清晰，请重新发送", "icbc.li")

    @pytest.mark.parametrize(
        ("member", "metadata", "code"),
        [
            ("bank.icbc", (), grpc.StatusCode.UNAUTHENTICATED),
            ("bank.icbc", (("x-fedgate-staff", "ccb.wang"),), grpc.StatusCode.PERMISSION_DENIED),
            ("gateway", ZHANG, grpc.StatusCode.PERMISSION_DENIED),
            ("bank.ccb", ZHANG, grpc.StatusCode.PERMISSION_DENIED),
            ("police.gd.afc", ZHANG, grpc.StatusCode.PERMISSION_DENIED),
        ],
    )
    async def test_only_this_agencys_listed_staff_get_in(
        self, kit: Any, bank_node: Any, member: str, metadata: Any, code: grpc.StatusCode
    ) -> None:
        node = await bank_node("bank.icbc", manual={"account_holder"})
        await queued(kit, node)
        staff = kit.link(node, as_member=member).staff
        error = await refused(
            staff.ListQueue(staff_service_pb2.ListQueueRequest(), metadata=metadata)
        )
        assert error.code() == code

    async def test_staff_of_another_bank_cannot_answer_this_banks_query(
        self, kit: Any, bank_node: Any
    ) -> None:
        icbc = await bank_node("bank.icbc", manual={"account_holder"})
        ccb = await bank_node("bank.ccb", staff=("ccb.wang",))
        request, _ = await queued(kit, icbc)
        ccb_staff = kit.link(ccb, as_member="bank.ccb").staff
        wang = (("x-fedgate-staff", "ccb.wang"),)
        listed = await ccb_staff.ListQueue(staff_service_pb2.ListQueueRequest(), metadata=wang)
        assert list(listed.items) == []
        error = await refused(
            ccb_staff.ClaimQueueItem(
                staff_service_pb2.ClaimQueueItemRequest(request_id=request.request_id),
                metadata=wang,
            )
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND
        # the CCB member certificate is refused by ICBC's node, whatever staff id it names
        error = await refused(
            kit.link(icbc, as_member="bank.ccb").staff.ClaimQueueItem(
                staff_service_pb2.ClaimQueueItemRequest(request_id=request.request_id),
                metadata=wang,
            )
        )
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await kit.link(icbc).get_result(request.request_id)).state == (
            ticket_pb2.TICKET_STATE_WAITING
        )


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="fedgate")
    staff_command.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def _run(argv: list[str]) -> int:
    args = _parse(argv)
    code: int = await asyncio.to_thread(args.func, args)
    return code


class TestStaffCommand:
    def test_the_command_and_the_node_agree_on_the_metadata_key(self) -> None:
        assert staff_command.STAFF_METADATA == STAFF_METADATA

    async def test_list_claim_and_answer_from_a_terminal(
        self, kit: Any, bank_node: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        node = await bank_node("bank.icbc", manual={"account_holder", "transactions"})
        request, envelope = await queued(kit, node)
        other, _ = await queued(kit, node, "transactions")
        common = [
            "--federation",
            str(kit.fed_dir),
            "--member",
            "bank.icbc",
            "--staff",
            "icbc.zhang",
            "--endpoint",
            node.endpoint,
        ]
        assert await _run(["staff", "queue", *common]) == 0
        table = capsys.readouterr().out
        assert request.request_id in table
        assert other.request_id in table
        assert "REQUEST ID" in table
        assert "account_holder" in table

        account = request.account_holder.account_number
        assert await _run(["staff", "show", request.request_id, *common]) == 0
        shown = json.loads(capsys.readouterr().out)  # not claimed: identifiers masked
        assert shown["request"]["account_holder"] == {"account_number": mask(account)}
        assert request.officer.phone not in json.dumps(shown)

        assert await _run(["staff", "claim", request.request_id, *common]) == 0
        assert "claimed" in capsys.readouterr().out
        assert await _run(["staff", "show", request.request_id, *common]) == 0
        shown = json.loads(capsys.readouterr().out)  # claimed by this staff member: in clear
        assert shown["request"]["account_holder"] == {"account_number": account}
        result = bank_pb2.AccountHolderResult(
            account_number=request.account_holder.account_number, account_name="李四"
        )
        result_json = json_format.MessageToJson(result)
        code = await _run(
            ["staff", "answer", request.request_id, "--result-json", result_json, *common]
        )
        assert code == 0
        out = capsys.readouterr().out
        assert "status" in out
        assert "icbc.zhang" in out

        answered = await kit.link(node).get_result(request.request_id)
        assert answered.state == ticket_pb2.TICKET_STATE_ANSWERED
        response = kit.verify_signed(envelope, answered.response)
        assert response.answered_by == "icbc.zhang"
        assert response.account_holder == result

        code = await _run(
            [
                "staff",
                "answer",
                other.request_id,
                "--status",
                "not_found",
                "--detail",
                "无此账户",
                *common,
            ]
        )
        assert code == 0
        not_found = await kit.link(node).get_result(other.request_id)
        assert (
            request_pb2.Response.FromString(not_found.response.body).status
            == request_pb2.RESPONSE_STATUS_NOT_FOUND
        )
        assert await _run(["staff", "queue", *common]) == 0
        assert "empty" in capsys.readouterr().out

    async def test_refusals_exit_1_with_the_reason(
        self, kit: Any, bank_node: Any, capsys: pytest.CaptureFixture[str]
    ) -> None:
        node = await bank_node("bank.icbc", manual={"account_holder"})
        request, _ = await queued(kit, node)
        base = [
            "--federation",
            str(kit.fed_dir),
            "--member",
            "bank.icbc",
            "--endpoint",
            node.endpoint,
        ]
        code = await _run(["staff", "claim", request.request_id, *base, "--staff", "icbc.nobody"])
        assert code == 1
        assert "icbc.nobody is not stationed staff of bank.icbc" in capsys.readouterr().err
        assert await _run(["staff", "claim", request.request_id, *base, "--staff", "icbc.li"]) == 0
        code = await _run(
            ["staff", "reject", request.request_id, *base, "--staff", "icbc.zhang", "--reason", "x"]
        )
        assert code == 1
        assert "claimed by icbc.li" in capsys.readouterr().err
        code = await _run(
            [
                "staff",
                "answer",
                request.request_id,
                *base,
                "--staff",
                "icbc.li",
                "--result-json",
                '{"noSuchField": 1}',
            ]
        )
        assert code == 1
        assert "--result-json" in capsys.readouterr().err


class TestStaffCommandSettings:
    async def test_the_federation_comes_from_fedgate_federation(
        self,
        kit: Any,
        bank_node: Any,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        node = await bank_node("bank.icbc", manual={"account_holder"})
        request, _ = await queued(kit, node)
        monkeypatch.setenv("FEDGATE_FEDERATION", str(kit.fed_dir))
        common = ["--member", "bank.icbc", "--staff", "icbc.zhang", "--endpoint", node.endpoint]
        assert await _run(["staff", "queue", *common]) == 0
        out = capsys.readouterr().out
        assert request.request_id in out
        assert "+08:00" in out  # deadlines in China time

    async def test_a_missing_federation_names_the_setting(
        self, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
    ) -> None:
        monkeypatch.setenv("FEDGATE_FEDERATION", str(tmp_path / "nowhere"))
        code = await _run(["staff", "queue", "--member", "bank.icbc", "--staff", "icbc.zhang"])
        assert code == 2
        err = capsys.readouterr().err
        assert "FEDGATE_FEDERATION" in err
        assert str(tmp_path / "nowhere") in err
