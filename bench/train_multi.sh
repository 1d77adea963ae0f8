#!/usr/bin/env bash
# FSDP2 training at the MSA-4B shape on 1, 2, 4 and 8 GPUs of one host (issue 23) in one command:
# bench/train.py on every rank through bench/train_multi.py; the W=1 run is the scaling baseline.
# Arguments go to bench/train.py (e.g. --steps 6 data.micro_batch_size=2). A world larger than the
# host is skipped. One JSON per world and one log each in $OUT.
#   bash bench/train_multi.sh
#   WORLDS="1 4" bash bench/train_multi.sh --steps 4
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/train_multi}
WORLDS=${WORLDS:-"1 2 4 8"}
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
mkdir -p "$OUT"
for w in $WORLDS; do
    if [ "$w" -gt "$GPUS" ]; then
        echo "W=$w: skipped ($GPUS GPUs here)"
        continue
    fi
    timeout "${STAGE_S:-400}" python -m torch.distributed.run --standalone --nproc-per-node "$w" bench/train_multi.py \
        --out "$OUT" "$@" > "$OUT/train_w$w.log" 2>&1
    echo "W=$w: exit $?"
    grep '^W=' "$OUT/train_w$w.log" || tail -n 5 "$OUT/train_w$w.log"
done
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
rows = sorted((json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("train_multi_*_w*.json")), key=lambda r: r["world"])
print(f"{'W':>3} {'tokens/s':>10} {'per GPU':>9} {'MFU/GPU':>8} {'efficiency':>10}")
for r in rows:
    eff = f"{r['scaling_efficiency']:.1%}" if "scaling_efficiency" in r else "-"
    print(f"{r['world']:>3} {r['tokens_per_s']:>10.0f} {r['tokens_per_s_per_gpu']:>9.0f} {r['mfu_per_gpu']:>8.1%} {eff:>10}")
PY
