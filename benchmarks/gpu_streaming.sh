#!/usr/bin/env bash
# StreamingLLM's GPU benchmarks in one call on the lent machine (after the GGUF halves were carried; see README.md).
. benchmarks/device_env.sh
bench_log gpu_streaming
run 200 python3 benchmarks/streaming_speed.py --model "$MODEL" --out "$OUT/streaming_speed"
run 200 python3 benchmarks/streaming_ppl.py --model "$MODEL" --text "$TEXT" --windows 1020 --sinks 4,0 --out "$OUT/streaming_ppl_1k"
run 150 python3 benchmarks/streaming_ppl.py --model "$MODEL" --text "$TEXT" --windows 2044,4092 --sinks 4 --tokens 262144 --out "$OUT/streaming_ppl_2k4k"
