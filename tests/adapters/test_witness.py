"""The witness node: cosigns the gateway's checkpoints over mTLS, for the gateway only."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.witness import WitnessNode
from fedgate.checkpoint import Checkpoint, CosignatureVerifier, sign_checkpoint
from fedgate.errors import InvalidArgument, LogInconsistent, MemberRefused, PermissionRefused
from fedgate.keys import public_key_from_raw
from fedgate.merkle import EMPTY_ROOT, MerkleTree, leaf_hash
from fedgate.note import NoteSigner
from fedgate.pki import revoke_member
from fedgate.registry import Registry
from fedgate.status import error_from_rpc
from fedgate.testing import free_port
from fedgate.tiles import TiledTree, partial_width, tile_path
from fedgate.tls import MemberCredentials, channel_credentials, channel_options
from fedgate.types import MemberId
from fedgate.v1 import audit_service_pb2, audit_service_pb2_grpc
from fedgate.web.serve import EmbeddedServer
from fedgate.witness import GrpcWitnessClient

ORIGIN = "fedgate.test/gateway/shard-0"
PBOC = MemberId("pboc.gz")


@pytest.fixture
async def witness(fed_dir: Path, tmp_path: Path) -> AsyncIterator[WitnessNode]:
    node = WitnessNode(
        federation=fed_dir,
        member=PBOC,
        state=tmp_path / "witness",
        origins=[ORIGIN],
        listen=f"127.0.0.1:{free_port()}",
    )
    await node.start()
    yield node
    await node.stop(0)


def _client(
    fed_dir: Path, node: WitnessNode, caller: str
) -> tuple[grpc.aio.Channel, GrpcWitnessClient]:
    creds = MemberCredentials.load(fed_dir, MemberId(caller))
    channel = grpc.aio.secure_channel(
        node.listen, channel_credentials(creds), options=channel_options(PBOC)
    )
    key = Registry.load_dir(fed_dir).member(PBOC).signing_keys[-1]
    verifier = CosignatureVerifier(name=PBOC, public_key=public_key_from_raw(key.public_key))
    return channel, GrpcWitnessClient(channel, verifier=verifier)


def _note(fed_dir: Path, tree: MerkleTree) -> str:
    gateway = MemberCredentials.load(fed_dir, MemberId("gateway"))
    signer = NoteSigner(name=ORIGIN, private_key=gateway.signing_key)
    return sign_checkpoint(Checkpoint(ORIGIN, tree.size, tree.root()), signer)


class TestWitnessNode:
    async def test_cosigns_a_consistent_log_for_the_gateway(
        self, fed_dir: Path, witness: WitnessNode
    ) -> None:
        channel, client = _client(fed_dir, witness, "gateway")
        async with channel:
            tree = MerkleTree()
            for i in range(5):
                tree.append(leaf_hash(b"entry %d" % i))
            sig = await client.add_checkpoint(0, [], _note(fed_dir, tree))
            assert sig.name == PBOC
            old = tree.size
            tree.append(leaf_hash(b"entry 5"))
            proof = tree.consistency_proof(old)
            again = await client.add_checkpoint(old, proof, _note(fed_dir, tree))
            assert again.name == PBOC

    async def test_refuses_a_forked_log(self, fed_dir: Path, witness: WitnessNode) -> None:
        channel, client = _client(fed_dir, witness, "gateway")
        async with channel:
            tree = MerkleTree()
            tree.append(leaf_hash(b"a"))
            await client.add_checkpoint(0, [], _note(fed_dir, tree))
            fork = MerkleTree()
            fork.append(leaf_hash(b"b"))
            fork.append(leaf_hash(b"c"))
            with pytest.raises(LogInconsistent):
                await client.add_checkpoint(1, fork.consistency_proof(1), _note(fed_dir, fork))

    async def test_only_the_gateway_may_ask(self, fed_dir: Path, witness: WitnessNode) -> None:
        creds = MemberCredentials.load(fed_dir, MemberId("police.gd.afc"))
        tree = MerkleTree()
        async with grpc.aio.secure_channel(
            witness.listen, channel_credentials(creds), options=channel_options(PBOC)
        ) as channel:
            stub = audit_service_pb2_grpc.WitnessServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.AddCheckpoint(
                    audit_service_pb2.AddCheckpointRequest(checkpoint=_note(fed_dir, tree))
                )
        assert isinstance(error_from_rpc(info.value), PermissionRefused)
        assert tree.root() == EMPTY_ROOT

    async def test_a_revoked_gateway_is_refused_without_a_restart(
        self, fed_dir: Path, tmp_path: Path
    ) -> None:
        fed = Path(shutil.copytree(fed_dir, tmp_path / "fed"))
        node = WitnessNode(
            federation=fed,
            member=PBOC,
            state=tmp_path / "witness",
            origins=[ORIGIN],
            listen=f"127.0.0.1:{free_port()}",
            reload_interval_s=0.05,
        )
        await node.start()
        try:
            channel, client = _client(fed, node, "gateway")
            async with channel:
                tree = MerkleTree()
                tree.append(leaf_hash(b"a"))
                await client.add_checkpoint(0, [], _note(fed, tree))
                revoke_member(fed, MemberId("gateway"), reason="gateway compromised (test)")
                for _ in range(100):  # the witness's watcher takes the new registry
                    if node.registry.revocation_of("gateway") is not None:
                        break
                    await asyncio.sleep(0.05)
                tree.append(leaf_hash(b"b"))
                with pytest.raises(MemberRefused, match="revoked"):
                    await client.add_checkpoint(1, tree.consistency_proof(1), _note(fed, tree))
        finally:
            await node.stop(0)

    def test_a_member_without_the_witness_role_cannot_run_one(
        self, fed_dir: Path, tmp_path: Path
    ) -> None:
        with pytest.raises(InvalidArgument, match="witness role"):
            WitnessNode(
                federation=fed_dir, member=MemberId("bank.icbc"), state=tmp_path, origins=[ORIGIN]
            )


class _StaticTiles:
    """A C2SP tile server for a sequence of leaf hashes (what a log would serve at its size)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def publish(self, hashes: list[bytes]) -> None:
        tree = TiledTree(size=0, edge=[b""], read=lambda level, a, b: [])
        for level, index, data in tree.extend(hashes):
            self.files[tile_path(level, index)] = data
        size, level = len(hashes), 0
        while size >> (8 * level):
            width = partial_width(level, size)
            if width:
                index = (size >> (8 * level)) // 256
                self.files[tile_path(level, index, width)] = tree.tile(level, index, width) or b""
            level += 1

    def app(self) -> Starlette:
        async def serve(request: Request) -> Response:
            data = self.files.get(request.path_params["path"])
            return Response(data, status_code=200) if data else Response(status_code=404)

        return Starlette(routes=[Route("/{path:path}", serve)])


class TestWitnessFromTiles:
    async def test_checks_the_log_from_its_tiles_not_the_pushed_proof(
        self, fed_dir: Path, tmp_path: Path
    ) -> None:
        tiles = _StaticTiles()
        server = EmbeddedServer(tiles.app())
        await server.start()
        node = WitnessNode(
            federation=fed_dir,
            member=PBOC,
            state=tmp_path / "witness",
            origins=[ORIGIN],
            listen=f"127.0.0.1:{free_port()}",
            tiles={ORIGIN: server.url},
        )
        await node.start()
        try:
            channel, client = _client(fed_dir, node, "gateway")
            async with channel:
                hashes = [leaf_hash(b"entry %d" % i) for i in range(300)]
                tree = MerkleTree.from_leaf_hashes(hashes)
                tiles.publish(hashes)
                await client.add_checkpoint(0, [], _note(fed_dir, tree))
                hashes += [leaf_hash(b"entry %d" % i) for i in range(300, 700)]
                tree = MerkleTree.from_leaf_hashes(hashes)
                tiles.publish(hashes)
                # No proof pushed at all: the witness computes its own from the tiles.
                sig = await client.add_checkpoint(300, [], _note(fed_dir, tree))
                assert sig.name == PBOC
                assert node.witness.last_cosigned(ORIGIN)[0] == 700
                fork = [leaf_hash(b"other %d" % i) for i in range(800)]
                tiles.publish(fork)
                with pytest.raises(LogInconsistent, match="not consistent"):
                    await client.add_checkpoint(
                        700, [], _note(fed_dir, MerkleTree.from_leaf_hashes(fork))
                    )
                assert node.witness.last_cosigned(ORIGIN)[0] == 700
        finally:
            await node.stop(0)
            await server.stop()

    def test_tiles_for_an_origin_it_does_not_witness_are_refused(
        self, fed_dir: Path, tmp_path: Path
    ) -> None:
        with pytest.raises(InvalidArgument, match="not witnessed"):
            WitnessNode(
                federation=fed_dir,
                member=PBOC,
                state=tmp_path / "w",
                origins=[ORIGIN],
                tiles={"other.example/log": "http://127.0.0.1:1"},
            )
