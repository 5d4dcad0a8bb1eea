"""Dependencies are locked: every declared package is pinned with hashes, and what runs is what is locked."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def audit_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("audit_deps", ROOT / "scripts" / "audit_deps.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_declared_dependency_is_locked_with_hashes_and_installed_as_locked() -> None:
    audit = audit_module()
    pins = audit.read_lock()
    assert {"litestar", "sqlalchemy", "numpy", "setuptools", "wheel"} <= {p.name for p in pins}
    assert audit.integrity(pins) == []


def test_drift_between_the_lock_and_the_environment_is_a_finding() -> None:
    audit = audit_module()
    pins = audit.read_lock()
    by_name = {p.name: p for p in pins if p.applies()}
    by_name["numpy"].version = "0.0.1"
    by_name["litestar"].hashes.clear()
    findings = audit.integrity(pins)
    assert any(f.startswith("numpy:") and "the lock says 0.0.1" in f for f in findings), findings
    assert any(f.startswith("litestar==") and "has no hash" in f for f in findings), findings
