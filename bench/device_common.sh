# Sourced by the bench/device_*.sh scripts: the environment of a device call and its GPU trace.
#   gpu_trace_start FILE   nvidia-smi utilisation and memory every 2 s into FILE (nothing without it)
#   gpu_trace_stop
set -u
export PYTHONPATH=src:bench PYTHONUNBUFFERED=1
GPU_TRACE_PID=""
gpu_trace_start() {
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 2 > "$1" 2>/dev/null &
    GPU_TRACE_PID=$!
}
gpu_trace_stop() {
    [ -n "$GPU_TRACE_PID" ] && kill "$GPU_TRACE_PID" 2>/dev/null
    GPU_TRACE_PID=""
}
# scaling_run SECONDS MODEL DIR [ARGS ...]: the held-out evaluation of MODEL (bench/scaling.py: world seed 7,
# 100 questions a kind, SIZES, RULER contexts, held-out WORDINGS at 1M) into DIR/scaling.{json,png,log},
# bounded by SECONDS; ARGS go on to scaling.py (a later option wins).
scaling_run() {
    local seconds=$1 model=$2 dir=$3
    shift 3
    mkdir -p "$dir"
    timeout "$seconds" python bench/scaling.py --model "$model" --work-dir /tmp/banks --out "$dir/scaling.json" \
        --plot "$dir/scaling.png" --sizes "${SIZES:-16K,128K,1M,10M}" --ruler-contexts "${RULER:-128K}" \
        --ruler-samples 2 --world-seed 7 --num-single 100 --num-multi 100 --max-new-tokens 48 --batch-size 50 \
        --wordings "${WORDINGS:-paraphrase,polite,lowercase}" --wording-sizes 1M "$@" > "$dir/scaling.log" 2>&1
}
