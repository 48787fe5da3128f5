"""Witness: cosigns only consistent checkpoints, keeps its state on disk, and over gRPC."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import grpc.aio
import pytest
import pytest_asyncio

from fedgate.checkpoint import Checkpoint, sign_checkpoint
from fedgate.errors import (
    InvalidArgument,
    LogInconsistent,
    NotFound,
    SignatureInvalid,
)
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.note import NoteSigner, add_signatures
from fedgate.v1 import audit_service_pb2_grpc
from fedgate.witness import GrpcWitnessClient, Witness, WitnessConflict, WitnessServicer

if TYPE_CHECKING:
    from conftest import Fed

ORIGIN = "fedgate.test/gateway/shard-0"


class _Log:
    """A bare tree plus the log's key: checkpoints at any size, forks on demand."""

    def __init__(self, signer: NoteSigner, prefix: bytes = b"entry") -> None:
        self.signer = signer
        self.tree = MerkleTree()
        self.prefix = prefix

    def grow(self, n: int) -> str:
        for _ in range(n):
            self.tree.append(leaf_hash(self.prefix + str(self.tree.size).encode()))
        return self.checkpoint()

    def checkpoint(self, size: int | None = None) -> str:
        size = self.tree.size if size is None else size
        return sign_checkpoint(Checkpoint(ORIGIN, size, self.tree.root(size)), self.signer)

    def proof(self, old: int) -> list[bytes]:
        return self.tree.consistency_proof(old, self.tree.size)


@pytest.fixture
def witness(fed: Fed, tmp_path: Path) -> Witness:
    return fed.witness("pboc.gz", tmp_path / "witness.json")  # type: ignore[arg-type]


@pytest.fixture
def log(fed: Fed) -> _Log:
    return _Log(fed.log_signer())


class TestCosigning:
    def test_first_and_consistent_checkpoints_are_cosigned(
        self, witness: Witness, log: _Log
    ) -> None:
        note = log.grow(3)
        sig = witness.add_checkpoint_sync(0, [], note)
        assert witness.verifier.verify(note.split("\n\n")[0] + "\n", sig) > 0
        note = log.grow(5)
        witness.add_checkpoint_sync(3, log.proof(3), note)
        assert witness.last_cosigned(ORIGIN) == (8, log.tree.root())
        witness.add_checkpoint_sync(8, [], note)  # the same checkpoint again is fine

    def test_the_state_survives_a_restart(self, fed: Fed, tmp_path: Path, log: _Log) -> None:
        first = fed.witness("pboc.gz", tmp_path / "w.json")  # type: ignore[arg-type]
        first.add_checkpoint_sync(0, [], log.grow(4))
        again = fed.witness("pboc.gz", tmp_path / "w.json")  # type: ignore[arg-type]
        assert again.last_cosigned(ORIGIN) == (4, log.tree.root())
        state = json.loads((tmp_path / "w.json").read_text())
        assert state["format"] == "fedgate-witness-state/v1"
        assert not list(tmp_path.glob(".w.json.*.tmp"))

    def test_a_damaged_state_file_stops_the_witness(self, fed: Fed, tmp_path: Path) -> None:
        (tmp_path / "w.json").write_text("{not json")
        with pytest.raises(LogInconsistent, match="damaged"):
            fed.witness("pboc.gz", tmp_path / "w.json")  # type: ignore[arg-type]


class TestRefusals:
    def test_a_rolled_back_checkpoint_is_refused(self, witness: Witness, log: _Log) -> None:
        witness.add_checkpoint_sync(0, [], log.grow(6))
        with pytest.raises(LogInconsistent, match="rolled back"):
            witness.add_checkpoint_sync(6, [], log.checkpoint(4))
        assert witness.last_cosigned(ORIGIN)[0] == 6

    def test_a_fork_is_refused(self, fed: Fed, witness: Witness, log: _Log) -> None:
        witness.add_checkpoint_sync(0, [], log.grow(6))
        fork = _Log(fed.log_signer(), prefix=b"other")
        note = fork.grow(9)
        with pytest.raises(LogInconsistent, match="not consistent"):
            witness.add_checkpoint_sync(6, fork.proof(6), note)
        same_size = fork.checkpoint(6)
        with pytest.raises(LogInconsistent, match="not consistent"):
            witness.add_checkpoint_sync(6, [], same_size)

    def test_a_wrong_old_size_is_a_conflict_carrying_the_witness_size(
        self, witness: Witness, log: _Log
    ) -> None:
        witness.add_checkpoint_sync(0, [], log.grow(6))
        note = log.grow(2)
        with pytest.raises(WitnessConflict, match="last cosigned size 6") as caught:
            witness.add_checkpoint_sync(3, log.proof(3), note)
        assert caught.value.size == 6

    def test_a_corrupted_proof_is_refused(self, witness: Witness, log: _Log) -> None:
        witness.add_checkpoint_sync(0, [], log.grow(5))
        note = log.grow(6)
        proof = log.proof(5)
        for i in range(len(proof)):
            bad = list(proof)
            bad[i] = bytes([bad[i][0] ^ 1]) + bad[i][1:]
            with pytest.raises(LogInconsistent):
                witness.add_checkpoint_sync(5, bad, note)
        with pytest.raises(LogInconsistent, match="proof length"):
            witness.add_checkpoint_sync(5, proof[:-1], note)

    def test_only_the_logs_key_is_accepted(self, fed: Fed, witness: Witness) -> None:
        impostor = _Log(NoteSigner(name=ORIGIN, private_key=fed.signer("bank.icbc").key))  # type: ignore[arg-type]
        with pytest.raises(SignatureInvalid, match="not signed by the log"):
            witness.add_checkpoint_sync(0, [], impostor.grow(2))

    def test_unknown_logs_and_garbage_are_refused(self, fed: Fed, witness: Witness) -> None:
        other = _Log(fed.log_signer("fedgate.test/other-log"))
        note = other.grow(1).replace(ORIGIN, "fedgate.test/other-log")
        with pytest.raises(NotFound, match="does not witness"):
            witness.add_checkpoint_sync(0, [], note)
        with pytest.raises(InvalidArgument, match="not a checkpoint"):
            witness.add_checkpoint_sync(0, [], "hello\n")


@pytest_asyncio.fixture
async def remote(witness: Witness) -> AsyncIterator[GrpcWitnessClient]:
    server = grpc.aio.server()
    audit_service_pb2_grpc.add_WitnessServiceServicer_to_server(WitnessServicer(witness), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield GrpcWitnessClient(channel, verifier=witness.verifier)
    await channel.close()
    await server.stop(None)


class TestOverGrpc:
    async def test_cosignature_lines_come_back_verified(
        self, remote: GrpcWitnessClient, log: _Log
    ) -> None:
        note = log.grow(3)
        sig = await remote.add_checkpoint(0, [], note)
        assert sig.name == "pboc.gz"
        assert "— pboc.gz " in add_signatures(note, [sig])

    async def test_errors_arrive_as_the_witness_raised_them(
        self, remote: GrpcWitnessClient, log: _Log
    ) -> None:
        await remote.add_checkpoint(0, [], log.grow(4))
        note = log.grow(1)
        with pytest.raises(WitnessConflict) as caught:
            await remote.add_checkpoint(1, log.proof(1), note)
        assert caught.value.size == 4
        with pytest.raises(LogInconsistent, match="rolled back"):
            await remote.add_checkpoint(4, [], log.checkpoint(2))
