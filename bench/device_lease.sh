#!/usr/bin/env bash
# One device call of a training run cut into leases (issue 16): resume from the packed checkpoint
# carried in .dev-carry/packed (if any), train RECIPE (default bios_small_c) for MINUTES, pack the
# checkpoint into $OUT/packed (parts of at most 15 MiB) and the model into $OUT/model.tar. The log
# goes to $OUT as it is written, so a call cut at its limit still returns it.
#   run with carry [".dev-carry"]:  bash bench/device_lease.sh 7 [KEY=VALUE ...]
# Between calls: copy the returned packed/ folder to .dev-carry/packed (ignored by /.dev-*/). The tree
# (~40.4 MB) and the packed checkpoint (~25.5 MB) together just fit the 64 MiB carry limit.
# Keep MINUTES about 2 minutes under the call's limit: startup, the first steps' compilation
# (~2 minutes on the H200 alone, 4 with anything else running) and packing are inside the call.
# EVAL_S=N (seconds, default 0): then evaluate the exported model, bounded by N seconds: gold-only
# reading and bench/scaling.py (SIZES, default 16K,1M,10M; RULER contexts RULER, default 128K) into
# $OUT/eval.tar.gz. With it a call returns 8 files (the device machines' limit).
. "$(dirname "$0")/device_common.sh"
MIN=${1:-7}
shift
RECIPE=${RECIPE:-bios_small_c}
OUT=${OUT:-runs/out}
mkdir -p "$OUT"
IN=""
[ -f .dev-carry/packed/manifest.json ] && IN="--packed-in .dev-carry/packed"
gpu_trace_start "$OUT/gpu_util.csv"
# shellcheck disable=SC2086
python bench/train_leases.py --recipe "$RECIPE" --minutes "$MIN" --ckpt runs/lease/ckpt $IN \
    --packed-out "$OUT/packed" --export runs/lease/model "$@" 2>&1 | tee "$OUT/train.log"
gpu_trace_stop
[ -f runs/lease/model/config.json ] && tar -C runs/lease -cf "$OUT/model.tar" model
if [ "${EVAL_S:-0}" -gt 0 ] && [ -f runs/lease/model/config.json ]; then
    mkdir -p runs/lease/eval
    end=$((SECONDS + EVAL_S))
    timeout "$EVAL_S" python bench/reading_probe.py runs/lease/model --questions 60 > runs/lease/eval/reading.json 2>/dev/null
    left=$((end - SECONDS))
    [ "$left" -gt 10 ] && scaling_run "$left" runs/lease/model runs/lease/eval --sizes "${SIZES:-16K,1M,10M}" \
        --ruler-samples 4 --device cuda
    tar -C runs/lease -czf "$OUT/eval.tar.gz" eval
fi
ls -la "$OUT" "$OUT/packed" 2>/dev/null
