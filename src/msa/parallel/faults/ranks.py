"""SIGSTOP of a Memory Parallel rank during shard open, routing and decoding (2 gloo ranks, torchrun)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from msa.memory import MemoryBank
from msa.parallel.faults.common import MODEL, Trial, texts

STAGES = ("open", "route", "decode")
GRACE_S = 5.0  # the job must end within timeout + GRACE_S of the stop


def _bank(work: Path, model, tok) -> Path:
    path = work / "ranks-bank"
    with MemoryBank.create(path, model, tok, segment_tokens=150, model_source=MODEL) as bank:
        for b in range(3):
            bank.add(texts(6, b, "rank"), progress=False)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path, stages: tuple[str, ...], timeout_s: float, model, tok, victim: int = 1) -> list[Trial]:
    bank = _bank(work, model, tok)
    out = []
    for stage in stages:
        marker = work / f"stopped-{stage}"
        marker.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(_free_port()), "--monitor-interval", "0.2", "-m", "msa.parallel.faults.rank_job",
               str(bank), "--stop-at", stage, "--victim", str(victim), "--timeout", str(timeout_s),
               "--marker", str(marker)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.time()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                start_new_session=True)  # fmt: skip
        try:
            output, _ = proc.communicate(timeout=120 + timeout_s)
            ended = time.time()
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            ended = float("inf")
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of the job may outlive it
            except ProcessLookupError:
                pass
        stopped = float(marker.read_text()) if marker.exists() else None
        took = ended - stopped if stopped is not None else float("nan")
        named = bool(re.search(rf"rank\(s\) {victim}\b", output))
        ok = stopped is not None and took <= timeout_s + GRACE_S and named
        lines = [ln for ln in output.splitlines() if "rank(s)" in ln or "msa: error" in ln]
        detail = (f"ended {took:.1f}s after the stop (limit {timeout_s + GRACE_S:.0f}s); "
                  + (lines[0][:200] if lines else "no line names the stopped rank")) if stopped else \
            f"the victim never stopped: {output[-400:]}"  # fmt: skip
        out.append(Trial("ranks", f"SIGSTOP during {stage}", ok, detail, ended - start if ended != float("inf") else -1,
                         {"seconds_after_stop": took, "exit_code": proc.returncode}))  # fmt: skip
    return out
