#!/usr/bin/env bash
# One device session for issue 6: train msa-bios-tiny variants side by side on one GPU, keep the best
# (held-out EM + router recall on an unseen world), then run the scaling benchmark with it.
#   setsid nohup bash bench/device_train_eval.sh MINUTES "A|--lr-scale 1 key=value" "B|..." > runs/session.out 2>&1 &
# Everything lands in runs/session/; progress in runs/session.out and runs/session/train_*.log.
# SCALING=0 stops after training and evaluation (the scaling runs then go to a second machine).
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
MIN=${1:-15}
shift
S=runs/session
mkdir -p $S
python -c "from msa.train import load_recipe; from msa.train.build import build_tokenizer; build_tokenizer(load_recipe('bios_tiny', []).data)"
NAMES=""
for spec in "$@"; do
    name=${spec%%|*}
    args=${spec#*|}
    NAMES="$NAMES $name"
    # shellcheck disable=SC2086
    python bench/train_shipped.py --minutes "$MIN" --out $S/$name --eval-people 2048 --eval-questions 100 $args \
        > $S/train_$name.log 2>&1 &
done
wait
BEST=$(python - $NAMES <<'PY'
import json, sys
best, score = sys.argv[1], -1.0
for v in sys.argv[1:]:
    try:
        e = json.load(open(f"runs/session/{v}/eval.json"))["eval"]
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
echo "$BEST" > $S/best
[ "${SCALING:-1}" = 0 ] && { echo done; exit 0; }
python bench/scaling.py --model $S/$BEST --work-dir /tmp/banks --out $S/scaling.json --plot $S/scaling.png \
    --sizes 16K,128K,1M,10M --ruler-contexts 32K,128K --world-seed 7 --num-single 100 --num-multi 100 \
    > $S/scaling.log 2>&1
echo "scaling done"
python bench/scaling.py --model $S/$BEST --work-dir /tmp/banks --out $S/scaling_100M.json \
    --sizes 16K,100M --ruler-contexts none --world-seed 7 --num-single 100 --num-multi 100 > $S/scaling_100M.log 2>&1
echo done
