#!/usr/bin/env bash
# DCA's GPU benchmarks in one call on the lent machine (after the GGUF halves were carried; see README.md).
# Writes one log plus each script's JSON/plot under $OUT (the device tool returns at most 8 files).
. benchmarks/device_env.sh
OUT=${OUT:-bench-out}; TEXT=${TEXT:-.data/pydocs-3.11.jsonl.gz}; MODEL=${MODEL:-/root/smol.gguf}
LOG="$OUT/gpu_dca.log"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$LOG"
run() { echo "== $*" | tee -a "$LOG"; timeout "$@" 2>&1 | grep -v -i warning | tee -a "$LOG"; }
run 240 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" --out "$OUT/dca_ppl"
run 150 python3 benchmarks/dca_prefill.py --model "$MODEL" --out "$OUT/dca_prefill"
run 150 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --out "$OUT/needle"
