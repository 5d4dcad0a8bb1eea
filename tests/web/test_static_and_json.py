"""Two things every page does: versioned static URLs (hashed once per change of the file, not per page: plotly.js is
4.8 MB) and Jinja's `tojson` (orjson, NaN as null so the browser's JSON.parse accepts it)."""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

import pytest
from jinja2 import Environment

import app.web.app as web


def test_a_static_url_is_hashed_once_per_version_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web, "STATIC", tmp_path)
    web._static_version.cache_clear()
    script = tmp_path / "vendor.js"
    script.write_bytes(b"one")
    reads = []
    real = Path.read_bytes

    def counted(self: Path) -> bytes:
        reads.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", counted)
    first = web._static_url("vendor.js")
    assert first.startswith("/static/vendor.js?v=")
    assert [web._static_url("vendor.js") for _ in range(50)] == [first] * 50
    assert len(reads) == 1
    script.write_bytes(b"two, longer")
    os.utime(script, ns=(1, 10**18))
    second = web._static_url("vendor.js")
    assert second != first
    assert len(reads) == 2
    assert web._static_url("absent.js") == "/static/absent.js?v=missing"


def test_tojson_writes_what_json_parse_reads() -> None:
    env = Environment(autoescape=True)
    env.policies["json.dumps_function"] = web._tojson
    rendered = env.from_string("<div data-figure='{{ f | tojson }}'>").render(
        f={"x": [1, 2.5, float("nan")], "name": "a'b<c>&"}
    )
    payload = rendered.split("data-figure='")[1].split("'>")[0]
    assert "'" not in payload
    assert "<" not in payload
    assert json.loads(payload) == {"x": [1, 2.5, None], "name": "a'b<c>&"}
    assert web._tojson({"d": Decimal("1.5")}, default=str) == '{"d": "1.5"}'  # what orjson cannot write
