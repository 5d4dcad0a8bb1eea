"""Imports point one way: the store uses the feed parsers, never the reverse. `bff.ingest` is formats only (bytes
in, readings and problems out); nothing in it imports `bff.store` or the database, at any level of a module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import bff.ingest

PACKAGE = Path(bff.ingest.__file__).parent
FORBIDDEN = ("bff.store", "sqlalchemy", "alembic", "app")


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_no_module_of_bff_ingest_imports_the_store_or_the_database() -> None:
    offending = {
        f"{path.name}: {name}"
        for path in PACKAGE.glob("*.py")
        for name in imported_names(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert offending == set()


def test_importing_every_parser_loads_neither_the_store_nor_the_database() -> None:
    modules = sorted(f"bff.ingest.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    probe = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)] == []
