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


def _alive(pid: str | None) -> bool:
    """Whether process ``pid`` exists and is not a zombie (Linux /proc)."""
    try:
        stat = Path(f"/proc/{int(pid)}/stat").read_text()  # type: ignore[arg-type]
    except (OSError, TypeError, ValueError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _kill(group: int, victim_pid: str | None) -> bool:
    """SIGKILL what is left of the job: its process group and the victim (torchrun may start workers in
    sessions of their own). Returns whether the victim was still alive."""
    alive = _alive(victim_pid)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if alive:
        os.kill(int(victim_pid), signal.SIGKILL)  # type: ignore[arg-type]
    return alive


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
        log = work / f"ranks-{stage}.log"
        start = time.time()
        with open(log, "w") as out_file:  # a file, not a pipe: a stray process cannot block reading it
            proc = subprocess.Popen(cmd, stdout=out_file, stderr=subprocess.STDOUT, text=True, env=env,
                                    start_new_session=True)  # fmt: skip
            try:
                proc.wait(timeout=120 + timeout_s)
                ended = time.time()
            except subprocess.TimeoutExpired:
                ended = float("inf")
        stopped, victim_pid = (marker.read_text().split() + [None])[:2] if marker.exists() else (None, None)
        stopped = float(stopped) if stopped is not None else None
        outlived = _kill(proc.pid, victim_pid)  # nothing of the job may outlive it
        output = log.read_text()
        took = ended - stopped if stopped is not None else float("nan")
        named = bool(re.search(rf"rank\(s\) {victim}\b", output))
        ok = stopped is not None and took <= timeout_s + GRACE_S and named and not outlived
        lines = [ln for ln in output.splitlines() if "rank(s)" in ln or "msa: error" in ln]
        detail = ("the stopped rank outlived the job; " * outlived + f"ended {took:.1f}s after the stop "
                  f"(limit {timeout_s + GRACE_S:.0f}s); "
                  + (lines[0][:200] if lines else "no line names the stopped rank")) if stopped else \
            f"the victim never stopped: {output[-400:]}"  # fmt: skip
        out.append(Trial("ranks", f"SIGSTOP during {stage}", ok, detail, ended - start if ended != float("inf") else -1,
                         {"seconds_after_stop": took, "exit_code": proc.returncode}))  # fmt: skip
    return out
