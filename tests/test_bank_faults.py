"""The fault suite (``python -m msa.parallel.faults``) in its bounded form: SIGKILLed writers, readers
during writes, a full disk, flipped bits and SIGSTOPped Memory Parallel ranks all keep the bank's
promises (the full form: ``python -m msa.parallel.faults --trials 40``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fault_suite_quick(tmp_path):
    out = tmp_path / "faults.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-m", "msa.parallel.faults", "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert out.exists(), run.stderr[-3000:]
    res = json.loads(out.read_text())
    failed = [t for t in res["trials"] if t["passed"] is False]
    assert run.returncode == 0 and not failed, (run.stdout[-3000:], failed)
    table = res["table"]
    assert table["kill"]["passed"] >= 4 and table["flips"]["passed"] >= 12
    assert table["ranks"]["passed"] == 3  # SIGSTOP during open, route and decode: ended in time, rank named
    (readers,) = [t for t in res["trials"] if t["kind"] == "readers"]
    assert readers["passed"] and readers["extra"]["snapshots"] >= 200
    disk = [t for t in res["trials"] if t["kind"] == "disk"]
    assert disk and all(t["passed"] or t["detail"].startswith("skipped: cannot mount") for t in disk), disk
    assert "kind" in run.stdout and "trials" in run.stdout  # the table
