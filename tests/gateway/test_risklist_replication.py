"""Members replicate the risk list from the gateway with RiskListService.Follow over mTLS: each
batch verified against a signed checkpoint and a consistency proof before it is applied; a member
offline catches up; forged, rolled-back and forked batches are refused and change nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import pytest

from adapters.risklist import Follower, Replica
from adapters.risklist.replica import ReplicaKeys
from fedgate.checkpoint import Checkpoint, CosignatureSigner, sign_checkpoint
from fedgate.errors import LogInconsistent, VerificationError
from fedgate.keys import generate_signing_key
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner, add_signatures, parse_note
from fedgate.registry import Registry
from fedgate.testing import mobile_number
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import request_pb2, risklist_pb2, risklist_pb2_grpc

if TYPE_CHECKING:
    from conftest import GatewayHarness

pytestmark = pytest.mark.asyncio(loop_scope="module")

R = risklist_pb2


def keys(h: GatewayHarness) -> ReplicaKeys:
    return ReplicaKeys.from_registry(
        Registry.load_dir(h.federation), origin=h.gateway.risklist.origin
    )


def follower(h: GatewayHarness, path: Path, member: str = "bank.abc") -> Follower:
    return Follower(
        replica=Replica.open(path, keys=keys(h)),
        endpoint=lambda: h.endpoint,
        credentials=MemberCredentials.load(h.federation, MemberId(member)),
        retry_s=(0.05, 0.2),
    )


async def add(h: GatewayHarness, serial: int) -> str:
    number = mobile_number("carrier.cucc", 7000 + serial)
    request = h.request("risk_list_add")
    request.risk_list_add.value = number
    answer = await h.client().ask(request)
    assert answer.response.status == request_pb2.RESPONSE_STATUS_OK
    return number


class TestFollow:
    async def test_a_member_follows_catches_up_after_being_offline(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        first = await add(harness, 1)
        f = follower(harness, tmp_path / "abc.sqlite")
        f.start()
        try:
            await f.wait_for_size(harness.gateway.risklist.size, timeout=10)
            assert f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, first)
            # live: a new entry arrives without asking
            second = await add(harness, 2)
            await f.wait_for_size(harness.gateway.risklist.size, timeout=10)
            assert f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, second)
        finally:
            await f.stop()
            f.replica.close()
        # offline while three more are listed and one removed
        missed = [await add(harness, 3 + i) for i in range(3)]
        removal = harness.request("risk_list_remove")
        removal.risk_list_remove.value = first
        assert (await harness.client().ask(removal)).response.status == 1
        # back: the replica reopens from disk and catches up from where it stopped
        f = follower(harness, tmp_path / "abc.sqlite")
        assert f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, second)
        f.start()
        try:
            await f.wait_for_size(harness.gateway.risklist.size, timeout=10)
            assert all(f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, n) for n in missed)
            assert not f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, first)
            everything = _batch(harness, 0, harness.gateway.risklist.size)[0]
            tree = MerkleTree.from_leaf_hashes(leaf_hash(x) for x in everything)
            assert f.replica.state.root == tree.root()
        finally:
            await f.stop()
            f.replica.close()

    async def test_the_gateway_restarted_the_member_follows_on(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        f = follower(harness, tmp_path / "ccb.sqlite", member="bank.ccb")
        f.start()
        try:
            await f.wait_for_size(harness.gateway.risklist.size, timeout=10)
            await harness.restart()  # a new port; the follower reconnects with backoff
            number = await add(harness, 20)
            await f.wait_for_size(harness.gateway.risklist.size, timeout=15)
            assert f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, number)
        finally:
            await f.stop()
            f.replica.close()

    async def test_expired_entries_stop_matching(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        request = harness.request("risk_list_add")
        request.risk_list_add.value = number = mobile_number("carrier.cucc", 7100)
        soon = datetime.now(UTC) + timedelta(seconds=30)
        request.risk_list_add.expires_at.FromDatetime(soon)
        assert (await harness.client().ask(request)).response.status == 1
        f = follower(harness, tmp_path / "exp.sqlite")
        f.start()
        try:
            await f.wait_for_size(harness.gateway.risklist.size, timeout=10)
        finally:
            await f.stop()
        phone = R.RISK_CATEGORY_PHONE_NUMBER
        assert f.replica.listed(phone, number, soon - timedelta(seconds=1))
        assert not f.replica.listed(phone, number, soon + timedelta(seconds=1))
        f.replica.close()


def _batch(h: GatewayHarness, start: int, stop: int) -> tuple[list[bytes], str, list[bytes]]:
    log = h.gateway.risklist
    leaves, note = log.read(start, stop)
    return leaves, note, log.consistency_proof(start, stop)


def _gateway_signer(h: GatewayHarness) -> NoteSigner:
    creds = MemberCredentials.load(h.federation, MemberId("gateway"))
    return NoteSigner(name=h.gateway.risklist.origin, private_key=creds.signing_key)


class TestWhoMayFollow:
    async def test_a_revoked_member_may_not_follow(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        f = follower(harness, tmp_path / "revoked.sqlite", member="carrier.ctcc")
        f.start()
        try:
            for _ in range(100):
                if f.last_error:
                    break
                await asyncio.sleep(0.05)
        finally:
            await f.stop()
        assert f.last_error is not None
        assert "revoked" in f.last_error
        assert f.replica.size == 0
        f.replica.close()

    async def test_a_member_revoked_while_following_is_cut_off(
        self, gw_federation: Path, tmp_path: Path, harness_factory: Any
    ) -> None:
        from fedgate.pki import revoke_member

        h = await harness_factory(gw_federation, tmp_path)
        try:
            f = follower(h, tmp_path / "gz.sqlite", member="bank.gzrcb")
            f.start()
            try:
                first = await add(h, 200)
                await f.wait_for_size(h.gateway.risklist.size, timeout=10)
                assert f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, first)
                revoke_member(h.federation, MemberId("bank.gzrcb"), reason="left (test)")
                assert h.gateway.reload_registry()
                second = await add(h, 201)
                for _ in range(100):
                    if f.last_error and "revoked" in f.last_error:
                        break
                    await asyncio.sleep(0.05)
                assert f.last_error is not None
                assert "revoked" in f.last_error
                assert not f.replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, second)
            finally:
                await f.stop()
                f.replica.close()
        finally:
            await h.close()

    async def test_following_from_beyond_the_list_is_refused(self, harness: GatewayHarness) -> None:
        creds = MemberCredentials.load(harness.federation, MemberId("bank.abc"))
        async with grpc.aio.secure_channel(
            harness.endpoint,
            channel_credentials(creds),
            options=channel_options(MemberId("gateway")),
        ) as channel:
            stub = risklist_pb2_grpc.RiskListServiceStub(channel)
            call = stub.Follow(risklist_pb2.FollowRequest(from_index=10**9))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call.read()
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "never had" in (caught.value.details() or "")


class TestRefusals:
    """Every bad batch raises and leaves the replica (disk and memory) exactly as it was."""

    async def _replica(self, h: GatewayHarness, tmp_path: Path, upto: int) -> Replica:
        while h.gateway.risklist.size < upto + 2:
            await add(h, 30 + h.gateway.risklist.size)
        replica = Replica.open(tmp_path / "r.sqlite", keys=keys(h))
        leaves, note, proof = _batch(h, 0, upto)
        replica.apply(first_index=0, leaves=leaves, checkpoint=note, consistency_proof=proof)
        return replica

    def _unchanged(self, replica: Replica, size: int, path: Path, h: GatewayHarness) -> None:
        assert replica.size == size
        replica.close()
        again = Replica.open(path, keys=keys(h))
        assert again.size == size
        again.close()

    async def test_a_forged_change_is_refused(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        replica = await self._replica(harness, tmp_path, 2)
        leaves, note, proof = _batch(harness, 2, 4)
        change = risklist_pb2.RiskListChange.FromString(leaves[0])
        change.entry.value = mobile_number("carrier.cucc", 9999)
        forged = [change.SerializeToString(), leaves[1]]
        with pytest.raises(VerificationError, match="do not hash to the checkpoint"):
            replica.apply(first_index=2, leaves=forged, checkpoint=note, consistency_proof=proof)
        assert not replica.listed(R.RISK_CATEGORY_PHONE_NUMBER, change.entry.value)
        self._unchanged(replica, 2, tmp_path / "r.sqlite", harness)

    async def test_a_checkpoint_signed_by_another_key_is_refused(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        replica = await self._replica(harness, tmp_path, 2)
        leaves, _, proof = _batch(harness, 2, 4)
        tree = MerkleTree.from_leaf_hashes(leaf_hash(x) for x in _batch(harness, 0, 4)[0])
        impostor = NoteSigner(
            name=harness.gateway.risklist.origin, private_key=generate_signing_key()
        )
        note = sign_checkpoint(Checkpoint(impostor.name, 4, tree.root()), impostor)
        with pytest.raises(VerificationError):
            replica.apply(first_index=2, leaves=leaves, checkpoint=note, consistency_proof=proof)
        self._unchanged(replica, 2, tmp_path / "r.sqlite", harness)

    async def test_a_bad_consistency_proof_is_refused(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        replica = await self._replica(harness, tmp_path, 3)
        leaves, note, proof = _batch(harness, 3, 5)
        assert proof
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
            with pytest.raises(LogInconsistent, match="not consistent"):
                replica.apply(first_index=3, leaves=leaves, checkpoint=note, consistency_proof=bad)
        with pytest.raises(LogInconsistent):
            replica.apply(
                first_index=3, leaves=leaves, checkpoint=note, consistency_proof=proof[1:]
            )
        self._unchanged(replica, 3, tmp_path / "r.sqlite", harness)

    async def test_a_rolled_back_list_is_refused(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        replica = await self._replica(harness, tmp_path, 4)
        _, older, _ = _batch(harness, 0, 2)  # a genuine, signed, older checkpoint
        with pytest.raises(LogInconsistent, match="rolled back"):
            replica.apply(first_index=2, leaves=[], checkpoint=older, consistency_proof=[])
        self._unchanged(replica, 4, tmp_path / "r.sqlite", harness)

    async def test_a_forked_list_is_refused(self, harness: GatewayHarness, tmp_path: Path) -> None:
        replica = await self._replica(harness, tmp_path, 3)
        # the gateway's own key signs another history of the same size (a split view)
        leaves = _batch(harness, 0, 3)[0]
        other = risklist_pb2.RiskListChange.FromString(leaves[2])
        other.entry.value = mobile_number("carrier.cucc", 9998)
        fork = [*leaves[:2], other.SerializeToString()]
        tree = MerkleTree.from_leaf_hashes(leaf_hash(x) for x in fork)
        note = sign_checkpoint(
            Checkpoint(replica.keys.origin, 3, tree.root()), _gateway_signer(harness)
        )
        with pytest.raises(LogInconsistent, match="forked"):
            replica.apply(first_index=3, leaves=[], checkpoint=note, consistency_proof=[])
        self._unchanged(replica, 3, tmp_path / "r.sqlite", harness)

    async def test_a_bad_witness_cosignature_is_refused(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        replica = await self._replica(harness, tmp_path, 2)
        leaves, note, proof = _batch(harness, 2, 4)
        witness = replica.keys.witness_verifiers[0]
        impostor = CosignatureSigner(name=witness.name, private_key=generate_signing_key())
        sig = impostor.cosign(parse_note(note).text, timestamp=1)
        # same name and key hash as the real witness, but a signature it never made
        sig = type(sig)(name=sig.name, key_hash=witness.key_hash, signature=sig.signature)
        with pytest.raises(VerificationError, match="cosignature"):
            replica.apply(
                first_index=2,
                leaves=leaves,
                checkpoint=add_signatures(note, [sig]),
                consistency_proof=proof,
            )
        self._unchanged(replica, 2, tmp_path / "r.sqlite", harness)

    async def test_a_follower_refuses_a_forged_list_and_keeps_its_own(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        replica = await self._replica(harness, tmp_path, 2)
        replica.close()
        f = follower(harness, tmp_path / "r.sqlite")
        impostor = NoteSigner(name=f.replica.keys.origin, private_key=generate_signing_key())
        f.replica.keys = ReplicaKeys(  # this member trusts another gateway key
            origin=f.replica.keys.origin, log_verifiers=(impostor.verifier(),)
        )
        f.start()
        try:
            for _ in range(100):
                if f.last_refusal:
                    break
                await asyncio.sleep(0.05)
        finally:
            await f.stop()
        assert f.last_refusal is not None
        assert f.replica.size == 2
        f.replica.close()

    async def test_a_follower_waits_for_the_witnesses_it_requires(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        f = follower(harness, tmp_path / "w.sqlite")
        f.replica.keys = replace(f.replica.keys, min_cosignatures=1)  # none cosign here
        f.start()
        try:
            for _ in range(100):
                if f.waiting_for_witnesses:
                    break
                await asyncio.sleep(0.05)
        finally:
            await f.stop()
        assert f.waiting_for_witnesses is not None
        assert "cosignatures" in f.waiting_for_witnesses
        assert f.last_refusal is None  # not an attack: nothing applied, nothing alarmed
        assert f.replica.size == 0
        f.replica.close()


class TestReplicaAtRest:
    async def test_a_replica_whose_changes_were_tampered_with_does_not_open(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        import sqlite3

        while harness.gateway.risklist.size < 2:
            await add(harness, 90 + harness.gateway.risklist.size)
        path = tmp_path / "t.sqlite"
        replica = Replica.open(path, keys=keys(harness))
        leaves, note, proof = _batch(harness, 0, 2)
        replica.apply(first_index=0, leaves=leaves, checkpoint=note, consistency_proof=proof)
        replica.close()
        db = sqlite3.connect(path)
        change = risklist_pb2.RiskListChange.FromString(leaves[1])
        change.entry.value = mobile_number("carrier.cucc", 9997)
        db.execute("UPDATE changes SET data = ? WHERE idx = 1", (change.SerializeToString(),))
        db.commit()
        db.close()
        with pytest.raises(LogInconsistent, match="do not match its state"):
            Replica.open(path, keys=keys(harness))

    async def test_the_index_comes_from_the_verified_changes_not_the_entries_table(
        self, harness: GatewayHarness, tmp_path: Path
    ) -> None:
        import sqlite3

        number = await add(harness, 95)
        path = tmp_path / "e.sqlite"
        replica = Replica.open(path, keys=keys(harness))
        size = harness.gateway.risklist.size
        leaves, note, proof = _batch(harness, 0, size)
        replica.apply(first_index=0, leaves=leaves, checkpoint=note, consistency_proof=proof)
        replica.close()
        db = sqlite3.connect(path)
        db.execute("DELETE FROM entries")  # someone unlists everything behind the replica's back
        db.commit()
        db.close()
        again = Replica.open(path, keys=keys(harness))
        assert again.listed(R.RISK_CATEGORY_PHONE_NUMBER, number)
        again.close()
