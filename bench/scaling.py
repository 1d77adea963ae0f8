"""Scaling benchmark: bios QA, router recall and ask latency from 16K to 100M tokens of memory, and
RULER NIAH at 32K-1M (MSA paper Figure 1 and Table 4). Results: JSON + records JSONL + PNG plot.

    python bench/scaling.py --model DIR --work-dir /scratch/msa-banks \
        --out bench/results/scaling.json --plot bench/results/scaling.png \
        --sizes 16K,128K,1M,10M,100M --ruler-contexts 32K,128K,1M

The JSON records the device, torch and msa versions. Thin shell over ``msa.eval.scaling``.
"""

import sys

from msa.eval.cli import bench_main

if __name__ == "__main__":
    sys.exit(bench_main(["scaling", *sys.argv[1:]]))
