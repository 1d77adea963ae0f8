"""Memory Parallel over 2, 4 and 8 GPUs (NCCL) equals one GPU. Each world skips without as many CUDA devices."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.gpu
@pytest.mark.parametrize("world", [2, 4, 8])
def test_gpus_equal_one_gpu(tmp_path, world):
    if torch.cuda.device_count() < world:
        pytest.skip(f"needs {world} CUDA devices")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           str(ROOT / "bench/parallel_equality.py"), "--dir", str(tmp_path / "eq"), "--out", str(tmp_path / "eq.json")]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert '"equal": true' in (tmp_path / "eq.json").read_text()
