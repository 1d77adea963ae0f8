#!/usr/bin/env bash
# Memory Parallel on the GPUs of one host (issue 23) in one command: the W=1 baseline at 100M tokens,
# 100M tokens on 4 and 8 GPUs, 1B tokens on 8 GPUs (bf16 routing keys) and on 4 GPUs (fp8 keys), and
# the real engine answering as one GPU (bench/parallel_equality.py) on 4 and 8 GPUs. A stage needing
# more GPUs than the host has is skipped. One JSON and one log per stage in $OUT.
#   bash bench/parallel_multi.sh                          # every stage
#   STAGES="w1 w4 1b4 eq4" bash bench/parallel_multi.sh    # some of them (e.g. on a 4-GPU host)
# Stages: w1 w4 w8 1b8 1b4 eq4 eq8; each bounded by STAGE_S seconds (default 420). The W>1 runs compare
# with the w1 file ($OUT/parallel_<card>_w1_100M.json): TTFT ratio, and at 100M the selection slot for slot.
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/parallel_multi}
STAGES=${STAGES:-"w1 w4 w8 1b8 1b4 eq4 eq8"}
GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
CARD=$(python -c "import torch; print(torch.cuda.get_device_name().replace(' ', '_'))")
BASE=$OUT/parallel_${CARD}_w1_100M.json
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/cards.txt" 2>&1

stage() {  # stage NAME WORLD SCRIPT ARGS...
    local name=$1 world=$2
    shift 2
    if [ "$world" -gt "$GPUS" ]; then
        echo "$name: skipped ($world GPUs needed, $GPUS here)"
        return
    fi
    timeout "${STAGE_S:-420}" python -m torch.distributed.run --standalone --nproc-per-node "$world" "$@" \
        > "$OUT/$name.log" 2>&1
    echo "$name: exit $?"
    grep -v '^20[0-9][0-9]-' "$OUT/$name.log" | tail -n 6
}

for s in $STAGES; do
    case $s in
        w1) stage w1 1 bench/parallel.py --tokens 1e8 --out "$OUT" ;;
        w4) stage w4 4 bench/parallel.py --tokens 1e8 --out "$OUT" --baseline "$BASE" ;;
        w8) stage w8 8 bench/parallel.py --tokens 1e8 --out "$OUT" --baseline "$BASE" ;;
        1b8) stage 1b8 8 bench/parallel.py --tokens 1e9 --out "$OUT" --baseline "$BASE" ;;
        1b4) stage 1b4 4 bench/parallel.py --tokens 1e9 --key-dtype fp8 --out "$OUT" --baseline "$BASE" ;;
        eq4) stage eq4 4 bench/parallel_equality.py --dir /tmp/msa-eq4 --out "$OUT/parallel_equality_${CARD}_w4.json" ;;
        eq8) stage eq8 8 bench/parallel_equality.py --dir /tmp/msa-eq8 --out "$OUT/parallel_equality_${CARD}_w8.json" ;;
        *) echo "unknown stage $s (w1 w4 w8 1b8 1b4 eq4 eq8)"; exit 2 ;;
    esac
done
ls -la "$OUT"
