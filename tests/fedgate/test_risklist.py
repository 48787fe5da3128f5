"""The shared pieces of the risk list: canonical values, the compact range, the index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedgate.errors import InvalidArgument, VerificationError
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.risklist import (
    CompactRange,
    RiskIndex,
    canonical_value,
    category_from_name,
    decode_change,
    micros,
)
from fedgate.v1 import risklist_pb2

R = risklist_pb2


class TestCanonicalValue:
    @pytest.mark.parametrize(
        ("category", "value", "canonical"),
        [
            (R.RISK_CATEGORY_PHONE_NUMBER, " 13812345678 ", "13812345678"),
            (R.RISK_CATEGORY_DOMAIN, "Fake-Bank.Example.", "fake-bank.example"),
            (R.RISK_CATEGORY_DOMAIN, "退款.example", "xn--0kw179e.example"),
            (R.RISK_CATEGORY_URL, "HTTPS://Fake.Example/pay?x=1", "https://fake.example/pay?x=1"),
            (R.RISK_CATEGORY_URL, "http://fake.example", "http://fake.example/"),
            (R.RISK_CATEGORY_IP_ADDRESS, "2001:DB8::0:1", "2001:db8::1"),
            (R.RISK_CATEGORY_APP_PACKAGE, "com.example.fakeloan", "com.example.fakeloan"),
            (R.RISK_CATEGORY_DEVICE_ID, "IMEI:86012345", "IMEI:86012345"),
            (R.RISK_CATEGORY_BANK_ACCOUNT, "6222021234567890123", "6222021234567890123"),
        ],
    )
    def test_canonical_forms(self, category: int, value: str, canonical: str) -> None:
        assert canonical_value(category, value) == canonical

    @pytest.mark.parametrize(
        ("category", "value"),
        [
            (R.RISK_CATEGORY_PHONE_NUMBER, "138-1234"),
            (R.RISK_CATEGORY_DOMAIN, "localhost"),
            (R.RISK_CATEGORY_DOMAIN, "bad_label.example"),
            (R.RISK_CATEGORY_URL, "ftp://fake.example/"),
            (R.RISK_CATEGORY_URL, "javascript:alert(1)"),
            (R.RISK_CATEGORY_IP_ADDRESS, "999.1.1.1"),
            (R.RISK_CATEGORY_APP_PACKAGE, "fakeloan"),
            (R.RISK_CATEGORY_BANK_ACCOUNT, "12ab"),
            (R.RISK_CATEGORY_UNSPECIFIED, "x"),
        ],
    )
    def test_bad_values_are_refused(self, category: int, value: str) -> None:
        with pytest.raises(InvalidArgument):
            canonical_value(category, value)

    def test_category_names(self) -> None:
        assert category_from_name("domain") == R.RISK_CATEGORY_DOMAIN
        with pytest.raises(InvalidArgument, match="unknown risk list category"):
            category_from_name("email")


class TestCompactRange:
    @given(st.lists(st.binary(max_size=8), max_size=70))
    def test_root_equals_the_full_tree_at_every_size(self, leaves: list[bytes]) -> None:
        tree = MerkleTree()
        edge = CompactRange()
        assert edge.root() == tree.root()
        for leaf in leaves:
            tree.append(leaf_hash(leaf))
            edge.append(leaf_hash(leaf))
            assert edge.root() == tree.root()
            assert CompactRange(edge.size, edge.hashes).root() == tree.root()

    def test_a_range_that_does_not_fit_its_size_is_refused(self) -> None:
        with pytest.raises(VerificationError):
            CompactRange(3, [b"\0" * 32])


class TestIndexAndLeaves:
    def _change(self, kind: int, value: str, expires: datetime) -> R.RiskListChange:
        change = R.RiskListChange(kind=kind)
        change.entry.category = R.RISK_CATEGORY_PHONE_NUMBER
        change.entry.value = value
        change.entry.expires_at.FromDatetime(expires)
        return change

    def test_add_expire_remove(self) -> None:
        now = datetime.now(UTC)
        index = RiskIndex()
        index.apply(self._change(R.RISK_CHANGE_KIND_ADD, "13812345678", now + timedelta(hours=1)))
        phone = R.RISK_CATEGORY_PHONE_NUMBER
        assert index.listed(phone, "13812345678", micros(now))
        assert not index.listed(phone, "13812345678", micros(now + timedelta(hours=2)))
        assert not index.listed(R.RISK_CATEGORY_BANK_ACCOUNT, "13812345678", micros(now))
        index.apply(self._change(R.RISK_CHANGE_KIND_REMOVE, "13812345678", now))
        assert not index.listed(phone, "13812345678", micros(now))
        assert index.count(phone, micros(now)) == 0

    def test_leaves_that_are_not_changes_are_refused(self) -> None:
        now = datetime.now(UTC)
        with pytest.raises(VerificationError, match="not a RiskListChange"):
            decode_change(b"\xff\xff\xff")
        with pytest.raises(VerificationError, match="no change kind"):
            decode_change(self._change(0, "13812345678", now).SerializeToString())
        with pytest.raises(VerificationError, match="canonical"):
            decode_change(
                self._change(R.RISK_CHANGE_KIND_ADD, " 13812345678", now).SerializeToString()
            )
        no_expiry = self._change(R.RISK_CHANGE_KIND_ADD, "13812345678", now)
        no_expiry.entry.ClearField("expires_at")
        with pytest.raises(VerificationError, match="no expiry"):
            decode_change(no_expiry.SerializeToString())
