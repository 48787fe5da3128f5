"""The client SDK's answer verification: a crafted answer is a fedgate error, never a crash."""

from __future__ import annotations

import pytest

from fedgate.client import verify_signed_response
from fedgate.errors import DecodeError
from fedgate.registry import Registry
from fedgate.v1 import envelope_pb2, request_pb2


class TestVerifySignedResponse:
    def test_an_answered_at_no_datetime_holds_is_a_decode_error(
        self, federation_registry: Registry
    ) -> None:
        response = request_pb2.Response(request_id="r", responder="bank.icbc")
        response.answered_at.seconds = 1 << 62
        signed = envelope_pb2.SignedResponse(
            response=envelope_pb2.SignedEnvelope(body=response.SerializeToString())
        )
        with pytest.raises(DecodeError, match="answered_at is not a valid time"):
            verify_signed_response(
                signed,
                request_body=b"",
                request_id="r",
                target="bank.icbc",
                registry=federation_registry,
            )
