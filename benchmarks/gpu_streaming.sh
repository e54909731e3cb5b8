#!/usr/bin/env bash
# StreamingLLM's GPU benchmarks in one call on the lent machine (after the GGUF halves were carried; see README.md).
. benchmarks/device_env.sh
OUT=${OUT:-bench-out}; TEXT=${TEXT:-.data/pydocs-3.11.jsonl.gz}; MODEL=${MODEL:-/root/smol.gguf}
LOG="$OUT/gpu_streaming.log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } 2>&1 | tee "$LOG"
run() { echo "== $*" | tee -a "$LOG"; timeout "$@" 2>&1 | grep -v -i warning | tee -a "$LOG"; }
run 200 python3 benchmarks/streaming_speed.py --model "$MODEL" --out "$OUT/streaming_speed"
run 200 python3 benchmarks/streaming_ppl.py --model "$MODEL" --text "$TEXT" --windows 1020 --sinks 4,0 --out "$OUT/streaming_ppl_1k"
run 150 python3 benchmarks/streaming_ppl.py --model "$MODEL" --text "$TEXT" --windows 2044,4092 --sinks 4 --tokens 262144 --out "$OUT/streaming_ppl_2k4k"
