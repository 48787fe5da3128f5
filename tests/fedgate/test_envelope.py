"""Envelope signing: round trips, every single-bit corruption, domains, response binding."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.actions import ACTIONS, RESULT_FIELD, new_request_id
from fedgate.envelope import (
    MAX_BODY_BYTES,
    Domain,
    Signer,
    countersign,
    decode_request,
    decode_response,
    request_hash,
    sign_envelope,
    verify_countersignature,
    verify_envelope,
    verify_response_binding,
)
from fedgate.errors import DecodeError, ResponseBindingError, SignatureInvalid
from fedgate.v1 import common_pb2, envelope_pb2, request_pb2

REQUEST_ACTIONS = [f.name for f in request_pb2.Request.DESCRIPTOR.oneofs_by_name["action"].fields]
RESULT_FIELDS = [f.name for f in request_pb2.Response.DESCRIPTOR.oneofs_by_name["result"].fields]


def make_request(action: str = "stop_payment") -> request_pb2.Request:
    req = request_pb2.Request(
        request_id=new_request_id(),
        nonce=b"\x01" * 16,
        requesting_agency="police.gd.afc",
        officer=common_pb2.Person(
            id="440100123", name="李警官", role=common_pb2.ROLE_POLICE_INVESTIGATOR
        ),
        purpose="紧急止付",
        target_agency="bank.icbc",
        urgency=common_pb2.URGENCY_EMERGENCY,
    )
    req.issued_at.GetCurrentTime()
    req.case.case_number = "A440100202611" + "00001"
    getattr(req, action).SetInParent()
    return req


@pytest.fixture(scope="module")
def signer() -> Signer:
    return Signer.from_key(Ed25519PrivateKey.generate())


class TestVocabulary:
    def test_actions_match_the_proto_oneof(self) -> None:
        assert set(REQUEST_ACTIONS) == set(ACTIONS)

    def test_every_action_has_a_result_field(self) -> None:
        assert set(RESULT_FIELD) == set(ACTIONS)
        assert set(RESULT_FIELD.values()) <= set(RESULT_FIELDS)

    def test_request_ids_are_uuid7_and_unique(self) -> None:
        ids = {new_request_id() for _ in range(1000)}
        assert len(ids) == 1000
        assert all(i[14] == "7" and i[19] in "89ab" for i in ids)


class TestRoundTrip:
    @pytest.mark.parametrize("action", REQUEST_ACTIONS)
    def test_every_request_kind(self, signer: Signer, action: str) -> None:
        body = make_request(action).SerializeToString()
        env = sign_envelope(body, signer, Domain.REQUEST)
        wire = envelope_pb2.SignedEnvelope.FromString(env.SerializeToString())
        verify_envelope(wire, signer.key.public_key(), Domain.REQUEST)
        assert decode_request(wire.body).WhichOneof("action") == action

    @pytest.mark.parametrize("result", RESULT_FIELDS)
    def test_every_response_kind(self, signer: Signer, result: str) -> None:
        response = request_pb2.Response(
            request_id="r", responder="bank.icbc", status=request_pb2.RESPONSE_STATUS_OK
        )
        getattr(response, result).SetInParent()
        env = sign_envelope(response.SerializeToString(), signer, Domain.RESPONSE)
        verify_envelope(env, signer.key.public_key(), Domain.RESPONSE)
        assert decode_response(env.body).WhichOneof("result") == result


class TestCorruption:
    def test_every_bit_of_body_signature_and_key_id(self, signer: Signer) -> None:
        env = sign_envelope(make_request().SerializeToString(), signer, Domain.REQUEST)
        public = signer.key.public_key()
        for field in ("body", "signature"):
            original: bytes = getattr(env, field)
            for bit in range(len(original) * 8):
                corrupted = bytearray(original)
                corrupted[bit // 8] ^= 1 << (bit % 8)
                bad = envelope_pb2.SignedEnvelope()
                bad.CopyFrom(env)
                setattr(bad, field, bytes(corrupted))
                with pytest.raises(SignatureInvalid):
                    verify_envelope(bad, public, Domain.REQUEST)
        for i in range(len(env.key_id)):
            bad = envelope_pb2.SignedEnvelope()
            bad.CopyFrom(env)
            flipped = "0" if env.key_id[i] != "0" else "1"
            bad.key_id = env.key_id[:i] + flipped + env.key_id[i + 1 :]
            with pytest.raises(SignatureInvalid, match="key id"):
                verify_envelope(bad, public, Domain.REQUEST)

    def test_truncated_signature(self, signer: Signer) -> None:
        env = sign_envelope(b"x", signer, Domain.REQUEST)
        env.signature = env.signature[:63]
        with pytest.raises(SignatureInvalid, match="64 bytes"):
            verify_envelope(env, signer.key.public_key(), Domain.REQUEST)

    def test_another_key(self, signer: Signer) -> None:
        other = Signer.from_key(Ed25519PrivateKey.generate())
        env = sign_envelope(b"body", other, Domain.REQUEST)
        env.key_id = signer.key_id
        with pytest.raises(SignatureInvalid):
            verify_envelope(env, signer.key.public_key(), Domain.REQUEST)

    @pytest.mark.parametrize("signed_as", list(Domain))
    @pytest.mark.parametrize("checked_as", [Domain.REQUEST, Domain.RESPONSE])
    def test_domains_do_not_mix(
        self, signer: Signer, signed_as: Domain, checked_as: Domain
    ) -> None:
        env = envelope_pb2.SignedEnvelope(
            body=b"same bytes",
            key_id=signer.key_id,
            signature=signer.sign(signed_as, b"same bytes"),
        )
        if signed_as is checked_as:
            verify_envelope(env, signer.key.public_key(), checked_as)
        else:
            with pytest.raises(SignatureInvalid, match="does not verify"):
                verify_envelope(env, signer.key.public_key(), checked_as)


class TestDecode:
    def test_malformed_body(self) -> None:
        with pytest.raises(DecodeError, match="not a well-formed"):
            decode_request(b"\xff\xff\xff")

    def test_oversized_body(self) -> None:
        with pytest.raises(DecodeError, match="limit"):
            decode_request(b"\x00" * (MAX_BODY_BYTES + 1))


class TestResponseBinding:
    def test_bound_response_accepted_and_others_refused(self, signer: Signer) -> None:
        req_a = make_request().SerializeToString()
        req_b = make_request().SerializeToString()
        id_a = decode_request(req_a).request_id
        response = request_pb2.Response(
            request_id=id_a, request_hash=request_hash(req_a), responder="bank.icbc"
        )
        verify_response_binding(
            response, request_body=req_a, request_id=id_a, responder="bank.icbc"
        )
        with pytest.raises(ResponseBindingError, match="request_hash"):
            verify_response_binding(
                response, request_body=req_b, request_id=id_a, responder="bank.icbc"
            )
        with pytest.raises(ResponseBindingError, match="answers request"):
            verify_response_binding(
                response, request_body=req_a, request_id="other", responder="bank.icbc"
            )
        with pytest.raises(ResponseBindingError, match="from"):
            verify_response_binding(
                response, request_body=req_a, request_id=id_a, responder="bank.ccb"
            )
        assert request_hash(req_a) == hashlib.sha256(req_a).digest()


class TestCountersignature:
    def test_round_trip_and_binding_to_index(self, signer: Signer) -> None:
        gateway = Signer.from_key(Ed25519PrivateKey.generate())
        response = sign_envelope(b"answer", signer, Domain.RESPONSE)
        cs = countersign(response, gateway, leaf_index=7)
        verify_countersignature(response, cs, gateway.key.public_key(), leaf_index=7)
        with pytest.raises(SignatureInvalid):
            verify_countersignature(response, cs, gateway.key.public_key(), leaf_index=8)
        tampered = envelope_pb2.SignedEnvelope()
        tampered.CopyFrom(response)
        tampered.body = b"answer!"
        with pytest.raises(SignatureInvalid):
            verify_countersignature(tampered, cs, gateway.key.public_key(), leaf_index=7)
        with pytest.raises(SignatureInvalid, match="key id"):
            verify_countersignature(response, cs, signer.key.public_key(), leaf_index=7)


class TestProperties:
    @settings(max_examples=200, deadline=None)
    @given(
        purpose=st.text(max_size=200),
        account=st.text(alphabet="0123456789", min_size=0, max_size=19),
        amount=st.integers(min_value=0, max_value=10**13),
        seconds=st.integers(min_value=0, max_value=2**40),
        nonce=st.binary(max_size=32),
    )
    def test_signed_request_round_trips(
        self, purpose: str, account: str, amount: int, seconds: int, nonce: bytes
    ) -> None:
        signer = _PROPERTY_SIGNER
        req = make_request()
        req.purpose = purpose
        req.nonce = nonce
        req.stop_payment.account_number = account
        req.stop_payment.amount.minor_units = amount
        req.stop_payment.transfer_time.CopyFrom(Timestamp(seconds=seconds))
        env = sign_envelope(req.SerializeToString(), signer, Domain.REQUEST)
        wire = envelope_pb2.SignedEnvelope.FromString(env.SerializeToString())
        verify_envelope(wire, signer.key.public_key(), Domain.REQUEST)
        assert decode_request(wire.body) == req


_PROPERTY_SIGNER = Signer.from_key(Ed25519PrivateKey.generate())
