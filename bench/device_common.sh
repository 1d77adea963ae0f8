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
