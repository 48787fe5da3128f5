"""docs/protocol.md's worked example, recomputed: the page must stay true."""

from __future__ import annotations

import re
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.envelope import Domain, Signer, request_hash, sign_envelope, verify_envelope
from fedgate.keys import raw_public_key
from fedgate.v1 import request_pb2

DOC = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")


def _hex_after(label: str) -> str:
    match = re.search(rf"{label}\s+([0-9a-f]+)", DOC)
    assert match, label
    return match.group(1)


class TestWorkedExample:
    def test_values_on_the_page(self) -> None:
        key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
        signer = Signer.from_key(key)
        request = request_pb2.Request(
            request_id="0193a6b2-7c4e-7d1a-9f00-2b5c6d7e8f90",
            requesting_agency="police.gd.afc",
            target_agency="bank.icbc",
        )
        request.account_holder.account_number = "6222021234567890128"
        body = request.SerializeToString()
        envelope = sign_envelope(body, signer, Domain.REQUEST)
        verify_envelope(envelope, key.public_key(), Domain.REQUEST)

        assert raw_public_key(key).hex() == _hex_after(r"public key \(raw\)")
        assert signer.key_id == _hex_after("key id")
        block = DOC.split("serializes to these 88 bytes:")[1].split("```")[1]
        assert "".join(block.split()) == body.hex()
        sig_block = DOC.split("signature  ")[1].split("```")[0]
        assert "".join(sig_block.split()) == envelope.signature.hex()
        assert f"request_hash = {request_hash(body).hex()}" in DOC
