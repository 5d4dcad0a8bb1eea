"""The command line starts light: parsing arguments and --help import no database, engine, web or PDF stack; a
command imports what it needs when it runs. Not timed (the machine's load varies): the modules loaded are checked."""

from __future__ import annotations

import subprocess
import sys

import app.cli
from app.cli import FEEDS, FORMATS, METHODS, MODULE_COMMANDS, TARGET_SET_NAMES, build_parser
from bff.ingest.records import Feed
from engine import Method
from engine.policy import TARGET_SETS

HEAVY = ("sqlalchemy", "alembic", "numpy", "engine", "matplotlib", "plotly", "litestar", "httpx", "jinja2", "bff.store")


def loaded_after(code: str) -> set[str]:
    """The top-level packages (and bff.store) loaded in a fresh interpreter after running `code`."""
    probe = f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    names = done.stdout.split()
    return {h for h in HEAVY if any(n == h or n.startswith(h + ".") for n in names)}


def test_the_written_out_choices_are_the_modules_own() -> None:
    assert tuple(f.value for f in Feed) == FEEDS
    assert tuple(m.value for m in Method) == METHODS
    assert tuple(TARGET_SETS) == TARGET_SET_NAMES
    assert FORMATS == ("fhir-r4", "fhir-r5", "hl7v2", "pdf", "note")


def test_the_listed_help_of_each_module_command_is_the_modules_own() -> None:
    full = build_parser()
    listed = build_parser("ingest")
    for parser in (full, listed):
        sub = next(a for a in parser._actions if a.dest == "command")
        helps = {a.dest: a.help for a in sub._choices_actions}
        for name, (_module, help_text) in MODULE_COMMANDS.items():
            assert helps[name] == help_text


def test_help_and_parsing_an_ingest_import_nothing_heavy() -> None:
    assert (
        loaded_after(
            "import app.cli; app.cli.build_parser('ingest').parse_args(['ingest', 'f', '--feed', 'csv', '--site', 's'])"
        )
        == set()
    )
    assert loaded_after("from app.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass") == set()


def test_the_ingest_command_module_loads_no_migration_web_or_pdf_stack() -> None:
    assert loaded_after("import app.cli.store") & {"alembic", "matplotlib", "plotly", "litestar", "jinja2"} == set()


def test_a_module_command_is_built_only_when_named() -> None:
    assert app.cli._command(["patient", "show", "P1"]) == "patient"
    assert app.cli._command(["ingest", "x"]) == ""
    assert app.cli._command(["--help"]) == ""
