#!/usr/bin/env bash
# Follow-ups on the same warm machine: decode profile, DCA perplexity with the fixed-tail column, prefill speed.
. benchmarks/device_env.sh
OUT=${OUT:-bench-out}; TEXT=${TEXT:-.data/pydocs-3.11.jsonl.gz}; MODEL=${MODEL:-/root/smol.gguf}
LOG="$OUT/gpu_round2.log"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } 2>&1 | tee "$LOG"
run() { echo "== $*" | tee -a "$LOG"; timeout "$@" 2>&1 | grep -v -i warning | tee -a "$LOG"; }
run 120 python3 benchmarks/profile_decode.py --model "$MODEL" --out "$OUT/profile_decode"
run 240 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" --out "$OUT/dca_ppl"
run 150 python3 benchmarks/dca_prefill.py --model "$MODEL" --out "$OUT/dca_prefill"
