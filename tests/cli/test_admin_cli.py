"""`glucobridge admin add-user | list | disable | reset` against a fresh embedded store (in process)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from app.cli import main
from bff.admin import AdminAccounts, SignIn
from bff.audit import recent
from bff.settings import Settings, get_settings
from bff.store.db import Store

Run = Callable[..., tuple[int, str, str]]
PASSWORD = "correct horse battery"
pytestmark = pytest.mark.usefixtures("cheap_hashes")


@pytest.fixture(name="cli")
def fx_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Run]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'cli.db'}")
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    get_settings.cache_clear()

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv), out, err)
        return code, out.getvalue(), err.getvalue()

    yield run
    get_settings.cache_clear()


def sign_in(name: str, password: str) -> SignIn:
    store = Store(get_settings())
    try:
        return AdminAccounts(store).sign_in(name, password, "192.0.2.1").outcome
    finally:
        store.dispose()


def test_add_list_disable_reset(cli: Run, tmp_path: Path) -> None:
    assert cli("admin", "add-user", "i.engineer", stdin=PASSWORD + "\n") == (0, "admin account i.engineer added\n", "")
    secret = tmp_path / "password"
    secret.write_text("another long password\n", encoding="utf-8")
    assert cli("admin", "add-user", "a.colleague", "--password-file", str(secret))[0] == 0
    code, out, _ = cli("admin", "list")
    assert code == 0
    rows = [line.split("\t")[:2] for line in out.splitlines()[1:]]
    assert rows == [["a.colleague", "active"], ["i.engineer", "active"]]
    assert PASSWORD not in out
    assert sign_in("i.engineer", PASSWORD) is SignIn.OK
    assert sign_in("a.colleague", "another long password") is SignIn.OK
    assert cli("admin", "disable", "i.engineer")[0] == 0
    assert "i.engineer\tdisabled" in cli("admin", "list")[1]
    assert sign_in("i.engineer", PASSWORD) is SignIn.FAILED
    assert cli("admin", "reset", "i.engineer", "--password-file", "-", stdin="a third long password")[0] == 0
    assert sign_in("i.engineer", "a third long password") is SignIn.OK
    store = Store(Settings.from_env({"DATABASE_URL": get_settings().database_url}))
    try:
        actors = {e.actor for e in recent(store) if e.event.startswith("admin.user.")}
    finally:
        store.dispose()
    assert all(actor and actor.startswith("cli") for actor in actors)


@pytest.mark.parametrize(
    ("argv", "stdin", "message"),
    [
        (("admin", "add-user", "outbox-worker"), PASSWORD, "reserved"),
        (("admin", "add-user", "Outbox-Worker"), PASSWORD, "reserved"),
        (("admin", "add-user", "Upper.Case"), PASSWORD, "account name"),
        (("admin", "add-user", "i.engineer"), "short", "at least 12"),
        (("admin", "add-user", "i.engineer"), "", "at least 12"),
        (("admin", "add-user"), PASSWORD, "needs a NAME"),
        (("admin", "disable", "nobody"), "", "no account"),
        (("admin", "add-user", "i.engineer", "--password-file", "/no/such/file"), "", "cannot read"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli: Run, argv: tuple[str, ...], stdin: str, message: str) -> None:
    code, _, err = cli(*argv, stdin=stdin)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_a_password_is_never_a_command_line_argument(cli: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("admin", "add-user", "i.engineer", "--password", PASSWORD)  # not an abbreviation of --password-file
    assert exited.value.code == 2
    assert "unrecognized arguments: --password" in capsys.readouterr().err


def test_the_shared_admin_password_is_refused_with_the_way_out(cli: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_PASSWORD", "hunter2")
    get_settings.cache_clear()
    code, _, err = cli("admin", "list")
    assert code == 2
    assert "glucobridge admin add-user NAME" in err
