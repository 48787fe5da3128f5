"""``fedgate staff add-user`` and ``fedgate audit add-user``: console accounts.

The ``staff`` and ``audit`` command groups live in their own modules; each calls
``add_user_parser(its_subparsers, role)`` to get an ``add-user`` command::

    fedgate staff add-user --state state/bank.icbc --member bank.icbc --user icbc.zhang \\
        --name 张三 --password-stdin < password.txt

The password is read from standard input (``--password-stdin``, first line) or asked for twice
on the terminal; it is never taken from the command line, where other users could see it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from fedgate.errors import FieldViolation, InvalidArgument
from fedgate.web.auth import MIN_PASSWORD, USERS_FILE, Role, UserStore

__all__ = ["add_user_parser"]

_WHERE = {
    Role.STAFF: "the agency node's state directory (the node's `state` setting)",
    Role.AUDITOR: "the gateway's state directory",
}


def add_user_parser(
    group_subparsers: argparse._SubParsersAction[argparse.ArgumentParser], role: Role | str
) -> argparse.ArgumentParser:
    """Add ``add-user`` (creating a ``role`` account) to a command group; returns the parser."""
    role = Role(role)
    parser = group_subparsers.add_parser(
        "add-user",
        help=f"create a {role.value} account for the web console",
        description=f"Create a {role.value} login for the web console in {USERS_FILE} of "
        f"{_WHERE[role]}. Passwords are stored as scrypt hashes; at least {MIN_PASSWORD} "
        "characters.",
    )
    parser.add_argument("--state", required=True, type=Path, help="the state directory")
    parser.add_argument("--member", required=True, help="the account's member, e.g. bank.icbc")
    parser.add_argument(
        "--user", required=True, help="the user id (3-32 of A-Z a-z 0-9 . _ -), e.g. icbc.zhang"
    )
    parser.add_argument("--name", required=True, help="the display name, e.g. 张三")
    parser.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    parser.set_defaults(func=_add_user, role=role)
    return parser


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():
        raise InvalidArgument.for_fields(
            [FieldViolation("password", "standard input is not a terminal: use --password-stdin")]
        )
    first = getpass.getpass("password: ")
    if getpass.getpass("password again: ") != first:
        raise InvalidArgument.for_fields([FieldViolation("password", "the two entries differ")])
    return first


def _add_user(args: argparse.Namespace) -> int:
    password = _read_password(args.password_stdin)
    store = UserStore.in_state_dir(args.state)
    try:
        user = store.add_user(
            args.user,
            member_id=args.member,
            display_name=args.name,
            role=args.role,
            password=password,
        )
    finally:
        store.close()
    print(
        f"added {user.role.value} account {user.user_id} ({user.display_name}) of "
        f"{user.member_id} in {Path(args.state) / USERS_FILE}"
    )
    return 0
