"""Admin account commands: `admin add-user | list | disable | reset` (the /admin pages' named accounts, bff/admin/).

    glucobridge admin add-user NAME [--password-file FILE]   a new account; the password is asked for twice on a
                                                             terminal, else read from FILE or standard input
                                                             (`-`), first line; never a command-line argument
    glucobridge admin list                                   name, state (active, locked until …, disabled),
                                                             created, last sign-in
    glucobridge admin disable NAME                           no more sign-ins; its sessions end now
    glucobridge admin reset NAME [--password-file FILE]      a new password; unlocks and re-enables the account
                                                             and ends its sessions

Names are 1-64 of a-z, 0-9, '.', '_' and '-'; glucobridge's own automatic actors (outbox-worker) are reserved.
Passwords need at least 12 characters. Every change is audited, with the operating-system user who made it.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from app.cli.common import BadInputError, open_store
from bff.admin import AdminAccountError, AdminAccounts, PasswordPolicyError, check_name, check_new_password


def _operator() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no name for this uid (a container)
        return "cli"


def read_password(source: str | None, stdin: TextIO | None = None, err: TextIO | None = None) -> str:
    """The new password: from a file (or `-`, standard input: its first line), else asked twice on a terminal."""
    stdin = stdin or sys.stdin
    if source is None and stdin.isatty():
        first = getpass.getpass("New password: ", stream=err)
        if getpass.getpass("Again: ", stream=err) != first:
            raise BadInputError("the two passwords differ")
        password = first
    else:
        try:
            text = stdin.read() if source in (None, "-") else Path(str(source)).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInputError(f"cannot read the password file {source}: {exc}") from None
        password = text.splitlines()[0] if text else ""
    try:
        check_new_password(password)
    except PasswordPolicyError as exc:
        raise BadInputError(str(exc)) from None
    return password


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.isoformat(timespec="seconds")


def cmd_admin(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.action != "list":
        if not args.name:
            raise BadInputError(f"admin {args.action} needs a NAME")
        try:
            check_name(args.name)
        except AdminAccountError as exc:
            raise BadInputError(str(exc)) from None
    password = read_password(args.password_file, err=err) if args.action in ("add-user", "reset") else ""
    store = open_store()
    accounts = AdminAccounts(store)
    try:
        if args.action == "list":
            now = datetime.now(UTC)
            out.write("name\tstate\tcreated\tlast sign-in\n")
            for account in accounts.list():
                out.write(f"{account.name}\t{account.state(now)}\t{_time(account.created_at)}\t"
                          f"{_time(account.last_login_at)}\n")  # fmt: skip
            return 0
        if args.action == "add-user":
            accounts.add(args.name, password, by=_operator())
            out.write(f"admin account {args.name} added\n")
        elif args.action == "disable":
            accounts.disable(args.name, by=_operator())
            out.write(f"admin account {args.name} disabled\n")
        else:
            accounts.reset(args.name, password, by=_operator())
            out.write(f"admin account {args.name}: new password, unlocked and enabled\n")
        return 0
    except (AdminAccountError, PasswordPolicyError) as exc:
        raise BadInputError(str(exc)) from None
    finally:
        store.dispose()


def add_parser(sub: Any) -> None:
    # allow_abbrev=False: `--password SECRET` must be an error, not an abbreviation of --password-file
    admin = sub.add_parser("admin", help="named accounts of the /admin pages: add-user, list, disable, reset",
                           allow_abbrev=False)  # fmt: skip
    admin.add_argument("action", choices=["add-user", "list", "disable", "reset"])
    admin.add_argument("name", nargs="?", help="the account name (lower case)")
    admin.add_argument("--password-file", help="add-user/reset: read the password from this file ('-': stdin)")
    admin.set_defaults(handler=cmd_admin)
