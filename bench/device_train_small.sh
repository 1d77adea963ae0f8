#!/usr/bin/env bash
# One device call for issue 16: train msa-bios-small (recipes/bios_small.py, from msa-bios-tiny's
# weights) within MINUTES, evaluate it on an unseen world, and pack what ships into $OUT/model.tar,
# with the GPU utilisation trace (nvidia-smi every 2 s) and the log.
#   bash bench/device_train_small.sh MINUTES [recipe overrides ...]
set -u
export PYTHONPATH=src:bench PYTHONUNBUFFERED=1
MIN=${1:-8}
shift
W=runs/msa-bios-small
OUT=${OUT:-runs/out}
mkdir -p "$OUT" runs
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > "$OUT/gpu_util.csv" 2>/dev/null &
SMI=$!
python bench/train_shipped.py --recipe bios_small --minutes "$MIN" --out $W --eval-people 2048 --eval-questions 50 "$@" \
    2>&1 | tee "$OUT/train.log"
kill $SMI 2>/dev/null
cp $W/eval.json "$OUT/eval.json" 2>/dev/null
tar -C runs -cf "$OUT/model.tar" msa-bios-small
ls -la "$OUT"
