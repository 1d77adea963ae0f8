#!/usr/bin/env bash
# One device call: train variants of a recipe side by side on one GPU (each its own process and data
# workers), keep the best (held-out EM + router recall on an unseen world), then run the scaling
# benchmark with it.
#   bash bench/device_train_eval.sh MINUTES "A|--lr-scale 1 key=value" "B|..."
# Environment: RECIPE (default bios_tiny), S (work folder, default runs/session), SCALING=0 (stop after
# training and evaluation), SIZES (scaling sizes, default 16K,128K,1M,10M), RULER (contexts, default
# 128K), WORDINGS (held-out wordings asked at 1M, default paraphrase,polite,lowercase). With OUT set
# (a device call), the models, evaluations, logs and scaling results are packed into $OUT (8 files at
# most: model_NAME.tar per variant, results.tar with the rest).
. "$(dirname "$0")/device_common.sh"
MIN=${1:-15}
shift
RECIPE=${RECIPE:-bios_tiny}
S=${S:-runs/session}
mkdir -p "$S"
[ -n "${OUT:-}" ] && gpu_trace_start "$S/gpu_util.csv"
python -c "from msa.train import load_recipe; from msa.train.build import build_tokenizer; build_tokenizer(load_recipe('$RECIPE', []).data)"
NAMES=""
PIDS=""
for spec in "$@"; do
    name=${spec%%|*}
    args=${spec#*|}
    NAMES="$NAMES $name"
    # shellcheck disable=SC2086
    python bench/train_shipped.py --recipe "$RECIPE" --minutes "$MIN" --out "$S/$name" --eval-people 2048 \
        --eval-questions 100 $args > "$S/train_$name.log" 2>&1 &
    PIDS="$PIDS $!"
done
# shellcheck disable=SC2086
wait $PIDS
BEST=$(python - "$S" $NAMES <<'PY'
import json, sys
where, names = sys.argv[1], sys.argv[2:]
best, score = names[0], -1.0
for v in names:
    try:
        e = json.load(open(f"{where}/{v}/eval.json"))["eval"]
    except (OSError, ValueError, KeyError):
        continue
    s = e["single_interleave"]["em"] + e["multi_interleave"]["em"] + e["single_interleave"]["router_recall_first_gold"]
    print(v, s, file=sys.stderr)
    if s > score:
        best, score = v, s
print(best)
PY
)
echo "best: $BEST"
echo "$BEST" > "$S/best"
if [ "${SCALING:-1}" != 0 ]; then
    scaling_run "${SCALING_TIMEOUT:-400}" "$S/$BEST" "$S"
    echo "scaling done"
fi
if [ -n "${OUT:-}" ]; then
    gpu_trace_stop
    for n in $NAMES; do
        [ -f "$S/$n/config.json" ] && tar -C "$S" -cf "$OUT/model_$n.tar" --exclude '*.jsonl' --exclude '*_reading' "$n"
    done
    tar -C "$S" -czf "$OUT/results.tar.gz" --exclude '*.safetensors' .
    ls -la "$OUT"
fi
echo done
