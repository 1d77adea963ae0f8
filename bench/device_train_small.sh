#!/usr/bin/env bash
# One device call for issue 16: train msa-bios-small (recipes/bios_small.py, from the recipe's init or
# model.init=...) within MINUTES, evaluate it on an unseen world, and pack what ships into
# $OUT/model.tar as soon as it exists, with the GPU utilisation trace (nvidia-smi every 2 s) and the
# log; then, with SCALING_S > 0, the scaling benchmark (16K-10M, held-out wordings at 1M, RULER 128K)
# bounded by SCALING_S seconds, into $OUT/scaling.tar.gz.
#   bash bench/device_train_small.sh MINUTES [train_shipped options and recipe overrides ...]
# EVAL_PEOPLE / EVAL_QUESTIONS / READING_QUESTIONS size train_shipped's own evaluation (2048 / 50 / 50).
. "$(dirname "$0")/device_common.sh"
MIN=${1:-8}
shift
W=runs/msa-bios-small
OUT=${OUT:-runs/out}
mkdir -p "$OUT" runs
gpu_trace_start "$OUT/gpu_util.csv"
python bench/train_shipped.py --recipe bios_small --minutes "$MIN" --out $W --eval-people "${EVAL_PEOPLE:-2048}" \
    --eval-questions "${EVAL_QUESTIONS:-50}" --reading-questions "${READING_QUESTIONS:-50}" "$@" 2>&1 | tee "$OUT/train.log"
gpu_trace_stop
cp $W/eval.json "$OUT/eval.json" 2>/dev/null
tar -C runs -cf "$OUT/model.tar" msa-bios-small
if [ "${SCALING_S:-0}" -gt 0 ]; then
    scaling_run "$SCALING_S" $W runs/scaling --device cuda
    tail -40 runs/scaling/scaling.log
    tar -C runs -czf "$OUT/scaling.tar.gz" scaling
fi
ls -la "$OUT"
