#!/usr/bin/env bash
# One device call at the end of a session: the GPU tests, the scaling run of the shipped model, and the
# server load test on the GPU. Results under $OUT. Needs the serving wheels in .whl (carried).
#   bash bench/device_checks.sh
set -u
export PYTHONPATH=src:bench PYTHONUNBUFFERED=1
OUT=${OUT:-runs/out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=src:bench:/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$OUT/card.txt"
timeout ${TESTS_S:-170} python -m pytest -q -m gpu tests -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
tail -3 "$OUT/gpu_tests.txt"
timeout ${SCALING_S:-240} python bench/scaling.py --model msa-bios-small --work-dir /tmp/w --out "$OUT/scaling.json" \
    --sizes ${SIZES:-16K,128K,1M,10M} --world-seed 7 --num-single 100 --num-multi 100 --ruler-contexts 128K \
    --ruler-samples 2 --max-new-tokens 48 --device cuda --batch-size 50 --wordings paraphrase,polite,lowercase \
    --wording-sizes 1M > "$OUT/scaling.log" 2>&1
tail -3 "$OUT/scaling.log"
timeout ${SERVE_S:-130} python bench/serve_load.py --device cuda --seconds 20 --engine-seconds 8 --out "$OUT/serve" \
    > "$OUT/serve.log" 2>&1
tail -3 "$OUT/serve.log"
ls -la "$OUT" "$OUT/serve" 2>/dev/null
