"""Console accounts: scrypt hashes, typed login errors, lock-out."""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedgate.errors import AuthenticationError, InvalidArgument, PermissionRefused
from fedgate.web.auth import (
    LOCKOUT,
    MAX_FAILURES,
    USERS_FILE,
    Role,
    ScryptParams,
    UserStore,
    check_user_id,
    hash_password,
    verify_password,
)

FAST = ScryptParams(n=2**10, r=8, p=1)
"""Cheap parameters for tests that are about the store, not the KDF (stored with the hash)."""


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> UserStore:
    s = UserStore.in_state_dir(tmp_path, clock=clock)
    s.add_user(
        "icbc.zhang",
        member_id="bank.icbc",
        display_name="张三",
        role=Role.STAFF,
        password="correct horse",
        params=FAST,
    )
    return s


class TestHashPassword:
    def test_default_parameters_are_stored_with_the_hash(self) -> None:
        encoded = hash_password("correct horse")
        scheme, n, r, p, salt, key = encoded.split("$")
        assert (scheme, n, r, p) == ("scrypt", str(2**15), "8", "1")
        assert len(base64.b64decode(salt)) == 16
        assert len(base64.b64decode(key)) == 32
        assert verify_password("correct horse", encoded)

    def test_wrong_password_does_not_verify(self) -> None:
        assert not verify_password("correct hors", hash_password("correct horse", FAST))

    def test_same_password_gets_a_fresh_salt(self) -> None:
        assert hash_password("correct horse", FAST) != hash_password("correct horse", FAST)

    @pytest.mark.parametrize(
        "encoded",
        ["", "plain", "bcrypt$1$2$3$AA==$AA==", "scrypt$x$8$1$AA==$AA==", "scrypt$1024$8$1$!$AA=="],
    )
    def test_malformed_hash_never_verifies(self, encoded: str) -> None:
        assert not verify_password("anything", encoded)


class TestCheckUserId:
    @given(st.text(alphabet="abcXYZ019._-", min_size=3, max_size=32))
    def test_accepts_the_staff_id_alphabet(self, user_id: str) -> None:
        assert check_user_id(user_id) == user_id

    @pytest.mark.parametrize("user_id", ["ab", "x" * 33, "icbc zhang", "张三", "a/b"])
    def test_refuses_others(self, user_id: str) -> None:
        with pytest.raises(InvalidArgument, match="user"):
            check_user_id(user_id)


class TestUserStore:
    def test_add_and_get(self, store: UserStore) -> None:
        user = store.get("icbc.zhang")
        assert user is not None
        assert (user.member_id, user.display_name, user.role) == ("bank.icbc", "张三", Role.STAFF)
        assert store.get("icbc.nobody") is None
        assert [u.user_id for u in store.users()] == ["icbc.zhang"]

    def test_the_file_is_private_and_durable(self, store: UserStore, tmp_path: Path) -> None:
        store.close()
        path = tmp_path / USERS_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        again = UserStore(path)
        assert again.verify_login("icbc.zhang", "correct horse").user_id == "icbc.zhang"
        again.close()

    def test_the_password_is_not_stored(self, store: UserStore, tmp_path: Path) -> None:
        store.close()
        assert b"correct horse" not in (tmp_path / USERS_FILE).read_bytes()

    def test_duplicate_user_is_refused(self, store: UserStore) -> None:
        with pytest.raises(InvalidArgument, match="already taken"):
            store.add_user(
                "icbc.zhang",
                member_id="bank.icbc",
                display_name="另一个张三",
                role=Role.STAFF,
                password="another password",
                params=FAST,
            )

    def test_short_password_and_empty_name_are_refused(self, store: UserStore) -> None:
        with pytest.raises(InvalidArgument, match=r"name, password"):
            store.add_user(
                "icbc.li",
                member_id="bank.icbc",
                display_name="  ",
                role=Role.STAFF,
                password="short",
            )

    def test_unknown_member_id_is_refused(self, store: UserStore) -> None:
        with pytest.raises(InvalidArgument):
            store.add_user(
                "icbc.li",
                member_id="Not A Member",
                display_name="李四",
                role=Role.STAFF,
                password="long enough password",
                params=FAST,
            )

    def test_login_with_the_right_password(self, store: UserStore) -> None:
        user = store.verify_login("icbc.zhang", "correct horse")
        assert user.user_id == "icbc.zhang"
        assert user.role is Role.STAFF

    def test_wrong_password_and_unknown_user_look_the_same(self, store: UserStore) -> None:
        with pytest.raises(AuthenticationError, match="wrong user or password") as wrong:
            store.verify_login("icbc.zhang", "wrong horse")
        with pytest.raises(AuthenticationError, match="wrong user or password") as unknown:
            store.verify_login("icbc.nobody", "wrong horse")
        assert wrong.value.reason == unknown.value.reason == "BAD_CREDENTIALS"

    def test_five_failures_lock_the_account(self, store: UserStore, clock: Clock) -> None:
        for _ in range(MAX_FAILURES - 1):
            with pytest.raises(AuthenticationError):
                store.verify_login("icbc.zhang", "wrong horse")
        with pytest.raises(PermissionRefused, match="locked") as locked:
            store.verify_login("icbc.zhang", "wrong horse")
        assert locked.value.reason == "LOCKED_OUT"
        clock.now += LOCKOUT - timedelta(seconds=1)
        with pytest.raises(PermissionRefused, match="locked") as still:
            store.verify_login("icbc.zhang", "correct horse")
        assert still.value.reason == "LOCKED_OUT"
        clock.now += timedelta(seconds=2)
        assert store.verify_login("icbc.zhang", "correct horse").user_id == "icbc.zhang"

    def test_concurrent_wrong_passwords_check_at_most_the_limit(self, store: UserStore) -> None:
        """30 wrong passwords at once (issue 10): exactly ``MAX_FAILURES`` are checked (wrong
        password, the last of them locking the account), every other one is refused as locked,
        and the right password is then refused too."""
        attempts = 30
        barrier = threading.Barrier(attempts)

        def attempt() -> str:
            barrier.wait()
            try:
                store.verify_login("icbc.zhang", "wrong horse")
            except PermissionRefused as exc:
                return "now locked" if "is now locked" in exc.message else "locked"
            except AuthenticationError as exc:
                return exc.reason
            return "logged in"

        with ThreadPoolExecutor(max_workers=attempts) as pool:
            outcomes = Counter(pool.map(lambda _: attempt(), range(attempts)))
        assert outcomes == {
            "BAD_CREDENTIALS": MAX_FAILURES - 1,
            "now locked": 1,
            "locked": attempts - MAX_FAILURES,
        }
        with pytest.raises(PermissionRefused, match="locked"):
            store.verify_login("icbc.zhang", "correct horse")

    def test_a_success_resets_the_counter(self, store: UserStore) -> None:
        for _ in range(MAX_FAILURES - 1):
            with pytest.raises(AuthenticationError):
                store.verify_login("icbc.zhang", "wrong horse")
        store.verify_login("icbc.zhang", "correct horse")
        for _ in range(MAX_FAILURES - 1):
            with pytest.raises(AuthenticationError):
                store.verify_login("icbc.zhang", "wrong horse")
        assert store.verify_login("icbc.zhang", "correct horse").user_id == "icbc.zhang"


class TestFiles:
    def test_every_file_of_the_store_is_owner_only(self, tmp_path: Path) -> None:
        """SQLite gives -wal and -shm the database's mode when it creates them: a store made
        0644 (umask 022) then chmod-ed left its WAL, with password hashes, world-readable."""
        old = os.umask(0o022)
        try:
            store = UserStore.in_state_dir(tmp_path)
            store.add_user(
                "icbc.zhang",
                member_id="bank.icbc",
                display_name="张三",
                role=Role.STAFF,
                password="correct horse",
                params=FAST,
            )
        finally:
            os.umask(old)
        files = sorted(tmp_path.glob(USERS_FILE + "*"))
        assert {f.name for f in files} >= {USERS_FILE, USERS_FILE + "-wal"}
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
        store.close()

    def test_an_older_stores_files_are_narrowed(self, tmp_path: Path) -> None:
        store = UserStore.in_state_dir(tmp_path)
        store.close()
        for f in tmp_path.glob(USERS_FILE + "*"):
            f.chmod(0o644)
        UserStore.in_state_dir(tmp_path).close()
        for f in tmp_path.glob(USERS_FILE + "*"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
