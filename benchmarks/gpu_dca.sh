#!/usr/bin/env bash
# DCA's GPU benchmarks in one call on the lent machine (after the GGUF halves were carried; see README.md).
# Writes one log plus each script's JSON/plot under $OUT (the device tool returns at most 8 files).
. benchmarks/device_env.sh
bench_log gpu_dca
run 240 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" --out "$OUT/dca_ppl"
run 150 python3 benchmarks/dca_prefill.py --model "$MODEL" --out "$OUT/dca_prefill"
run 150 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --out "$OUT/needle"
