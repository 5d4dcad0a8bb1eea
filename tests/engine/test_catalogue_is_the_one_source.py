"""What a metric is lives in engine/catalogue.py only: no metric code and no metric rounding elsewhere in product code.

Fourteen hand-typed copies of a metric's code and decimals let 32.4468 % become 32.4 % on the review, 32.5 % in the
plan and 32.45 % at the EHR. These tests read the source (AST, so docstrings and comments may name codes) and fail
when a code string or a fixed-decimal format or `round()` appears in product code outside the catalogue. The few
fixed decimals that are not metric values (chart coordinates, axis labels, a target range's bounds) are listed
with the reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from engine.catalogue import METRICS, READING_MG_DL, READING_MMOL_L, SUMMARY_PANEL, TIMES_IN_RANGES_PANEL

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("engine", "bff", "app")
CATALOGUE_FILE = ROOT / "engine" / "catalogue.py"
#: Codes of every metric, panel and reading (LOINC and glucobridge's own). "gri" is left out: it is also the
#: engine's metrics key of the same number, which product code rightly names.
CODES = frozenset(
    {c.code for m in METRICS for c in m.codes.values()}
    | {SUMMARY_PANEL.code, TIMES_IN_RANGES_PANEL.code, READING_MG_DL.code, READING_MMOL_L.code}
) - {"gri"}
LOINC_LIKE = re.compile(r"\b\d{4,6}-\d\b")
FIXED_DECIMALS = re.compile(r"\.(\d+|\{\})f$")  # `:.1f`, and a precision given at run time `:.{digits}f`
#: (file, the expression's source) of fixed decimals that are not metric values, and why.
ALLOWED_ROUNDING = {
    ("engine/report.py", "active_pct"): "a sufficiency reason quotes the engine's own threshold check",
    ("bff/resources/report_pdf.py", "mg_dl / self.factor"): "an axis label of a target line in mmol/L",
    ("bff/resources/note.py", "lo_mmol"): "a target set's range bound, as published",
    ("bff/resources/note.py", "hi_mmol"): "a target set's range bound, as published",
    ("app/web/presenters.py", "v * factor"): "a chart coordinate (not a value anyone reads as a number)",
    ("app/web/presenters.py", "m / 60"): "a chart coordinate in hours",
    ("app/web/writeback.py", "(held.window_end_ms - held.window_start_ms) / 86_400_000"): "a window length in days",
    ("app/demo.py", "timeout_s"): "a timeout in a start-up message",
    ("bff/ingest/validate.py", "ahead"): "minutes a reading's clock is ahead, in a quarantine reason",
    ("app/cli/outcomes.py", "float(value) / 2"): "the width of a text bar chart",
}


def product_files() -> list[Path]:
    files = [p for top in PRODUCT for p in (ROOT / top).rglob("*.py") if p != CATALOGUE_FILE]
    # The IG validator used by the tests, not by product code (issue 13 moves it out).
    return [p for p in files if p.name != "profiles.py"]


def docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def test_no_metric_code_is_typed_outside_the_catalogue() -> None:
    found = []
    for path in product_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                hits = {c for c in LOINC_LIKE.findall(node.value) if c in CODES}
                hits |= {node.value} & CODES
                if hits:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(hits)}")
    assert not found, "metric codes outside engine/catalogue.py:\n" + "\n".join(found)


def rounded_expressions(source: str) -> list[tuple[int, str]]:
    """(line, expression) of every fixed-decimal format spec and `round()` call in the source."""
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            spec = "".join(
                str(v.value) if isinstance(v, ast.Constant) else "{}" for v in getattr(node.format_spec, "values", [])
            )
            if FIXED_DECIMALS.search(spec):
                out.append((node.lineno, ast.get_source_segment(source, node.value) or ""))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "round":
            out.append((node.lineno, ast.get_source_segment(source, node.args[0]) or "" if node.args else ""))
    return out


def test_no_metric_is_rounded_outside_the_catalogue() -> None:
    found = []
    for path in product_files():
        relative = str(path.relative_to(ROOT))
        for line, expression in rounded_expressions(path.read_text(encoding="utf-8")):
            if not any(relative == f and snippet in expression for f, snippet in ALLOWED_ROUNDING):
                found.append(f"{relative}:{line}: {expression}")
    assert not found, "fixed decimals outside engine/catalogue.py (use engine.catalogue):\n" + "\n".join(found)


def test_the_guard_sees_a_copy_when_there_is_one(tmp_path: Path) -> None:
    """The scan itself works: a typed code and a `:.2f` on a metric are both reported."""
    source = (
        'GMI = "97506-0"\ndef f(m, d):\n    """LOINC 97506-0 in a docstring is fine."""\n'
        '    return f"{m:.2f}" + f"{m:.{d}f}" + str(round(m, 1)) + f"{m:,}"\n'
    )
    tree = ast.parse(source)
    skip = docstrings(tree)
    codes = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in CODES and id(n) not in skip]
    assert codes == ["97506-0"]
    assert [expression for _, expression in rounded_expressions(source)] == ["m", "m", "m"]
