"""engine/ is pure: it imports only the standard library's computational modules, numpy and numba; no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
ALLOWED = {
    "__future__",
    "collections",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "functools",
    "hashlib",
    "json",
    "math",
    "types",
    "typing",
    "zoneinfo",
    "numpy",
    "numba",  # compiles engine/kernels.py; its on-disk cache of machine code is numba's, not an input or output
    "engine",
}
FORBIDDEN_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}


def _modules() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def test_engine_imports_only_pure_modules() -> None:
    offenders = []
    for path in _modules():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] not in ALLOWED]
    assert offenders == []


def test_engine_does_no_io() -> None:
    offenders = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
                offenders.append(f"{path.name}:{node.lineno} {node.func.id}()")
    assert offenders == []


def test_the_purity_check_sees_every_engine_module() -> None:
    names = {p.name for p in _modules()}
    assert {"cohort.py", "report.py", "timezones.py", "readings.py"} <= names
