#!/usr/bin/env bash
# Round 5: StreamingLLM with DCA inside (windows past the trained length) beside StreamingLLM alone.
. benchmarks/device_env.sh
bench_log gpu_round5
run 420 python3 benchmarks/streaming_dca.py --model "$MODEL" --text "$TEXT" --tokens 262144 --out "$OUT/streaming_dca"
