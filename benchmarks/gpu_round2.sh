#!/usr/bin/env bash
# Follow-ups on the same warm machine: decode profile, DCA perplexity with the fixed-tail column, prefill speed.
. benchmarks/device_env.sh
bench_log gpu_round2
run 120 python3 benchmarks/profile_decode.py --model "$MODEL" --out "$OUT/profile_decode"
run 240 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" --out "$OUT/dca_ppl"
run 150 python3 benchmarks/dca_prefill.py --model "$MODEL" --out "$OUT/dca_prefill"
