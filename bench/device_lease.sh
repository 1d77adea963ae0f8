#!/usr/bin/env bash
# One device call of a training run cut into leases (issue 16): resume from the packed checkpoint
# carried in .dev-carry/packed (if any), train RECIPE (default bios_small_c) for MINUTES, pack the
# checkpoint into $OUT/packed (parts of at most 15 MiB) and the model into $OUT/model.tar. The log
# goes to $OUT as it is written, so a call cut at its limit still returns it.
#   run with carry [".dev-carry"]:  bash bench/device_lease.sh 7 [KEY=VALUE ...]
# Between calls: copy the returned packed/ folder to .dev-carry/packed (ignored by /.dev-*/). The tree
# (~40.4 MB) and the packed checkpoint (~25.5 MB) together just fit the 64 MiB carry limit.
# Keep MINUTES about 2 minutes under the call's limit: startup, the first step's compilation
# (1-4 minutes on the H200) and packing are inside the call.
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
ls -la "$OUT" "$OUT/packed" 2>/dev/null
