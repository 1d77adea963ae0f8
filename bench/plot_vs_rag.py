"""MSA against the RAG baseline read by the same model: EM vs memory size, from two result files.

    python bench/plot_vs_rag.py SCALING.json RAG.json OUT.png

SCALING.json from ``msa bench scaling``, RAG.json from ``msa bench rag`` (same world and question
seeds); the questions about anyone in each memory (``*_own``).
"""

import json
import sys

from msa.eval.scaling_plot import plot_against_baselines

if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    scaling, rag = (json.load(open(p)) for p in sys.argv[1:3])
    sys.exit(0 if plot_against_baselines(scaling, rag, sys.argv[3]) else 1)
