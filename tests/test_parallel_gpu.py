"""Memory Parallel over 2 GPUs (NCCL) equals one GPU. Skipped without 2 CUDA devices."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_equal_one_gpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", str(ROOT / "bench/parallel_equality.py"),
           "--dir", str(tmp_path / "eq"), "--out", str(tmp_path / "eq.json")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"equal": true' in (tmp_path / "eq.json").read_text()
