#!/usr/bin/env bash
# Round 4: streaming throughput after building the ring mask once per forward (window 2044 / pieces of 1024, and
# window 4092 / pieces of 2046), and passkey retrieval with more trials per (length, depth).
. benchmarks/device_env.sh
bench_log gpu_round4
run 150 python3 benchmarks/streaming_speed.py --model "$MODEL" --full-lengths 32768 --out "$OUT/speed_2k"
run 150 python3 benchmarks/streaming_speed.py --model "$MODEL" --window 4092 --piece 2046 --full-lengths 32768 --out "$OUT/speed_4k"
run 280 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --trials 5 --out "$OUT/needle"
