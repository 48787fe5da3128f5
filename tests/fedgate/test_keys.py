"""Tests for fedgate.keys: the one place that signs and verifies Ed25519."""

from __future__ import annotations

import gc

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.keys import key_id_of, raw_public_key, sign_bytes, verify_bytes


class TestSignAndVerify:
    @settings(max_examples=50, deadline=None)
    @given(message=st.binary(max_size=2048))
    def test_signatures_are_those_cryptography_makes(self, message: bytes) -> None:
        key = Ed25519PrivateKey.generate()
        signature = sign_bytes(key, message)
        assert signature == key.sign(message)  # Ed25519 is deterministic
        key.public_key().verify(signature, message)  # and cryptography accepts ours
        assert verify_bytes(key.public_key(), key.sign(message), message)

    def test_every_corruption_is_refused(self) -> None:
        key = Ed25519PrivateKey.generate()
        message = b"fedgate/v1/request\nbody"
        signature = sign_bytes(key, message)
        public = key.public_key()
        assert verify_bytes(public, signature, message)
        for i in range(len(signature)):
            for bit in (0x01, 0x80):
                flipped = bytearray(signature)
                flipped[i] ^= bit
                assert not verify_bytes(public, bytes(flipped), message), (i, bit)
        assert not verify_bytes(public, signature, message + b"x")
        assert not verify_bytes(public, signature[:-1], message)
        assert not verify_bytes(public, signature + b"\0", message)
        assert not verify_bytes(public, b"", message)
        other = Ed25519PrivateKey.generate().public_key()
        assert not verify_bytes(other, signature, message)

    def test_a_reused_object_id_never_answers_with_another_keys_cache(self) -> None:
        # Keys are cached by object identity; make many short-lived keys so ids get reused.
        message = b"m"
        for _ in range(300):
            key = Ed25519PrivateKey.generate()
            public = key.public_key()
            assert verify_bytes(public, key.sign(message), message)
            assert key_id_of(public) == key_id_of(raw_public_key(public))
            assert sign_bytes(key, message) == key.sign(message)
            del key, public
            gc.collect(0)
