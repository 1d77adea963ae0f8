"""Every bench script of issue 5 runs end to end at tiny sizes on the CPU (``--quick``)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.slow


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_encode_quick(tmp_path):
    out = tmp_path / "encode.json"
    res = _load("encode").main(["--quick", "--layers", "2", "--out", str(out)])
    assert json.loads(out.read_text())["bench"] == "encode"
    assert set(res["results"]) == {"random", "sorted", "packed", "gemm_only_packed"}
    assert res["results"]["sorted"]["padding_waste"] <= res["results"]["random"]["padding_waste"]


def test_ask_quick(tmp_path):
    out = tmp_path / "ask.json"
    res = _load("ask").main(["--quick", "--out", str(out)])
    assert len(res["rows"]) == 4 and all(r["ttft_ms"] > 0 and r["fetch_bytes"] > 0 for r in res["rows"])


def test_fp8_recall_quick(tmp_path):
    out = tmp_path / "fp8.json"
    res = _load("fp8_recall").main(["--quick", "--out", str(out)])
    assert 0.5 <= res["recall@16"] <= 1.0
