#!/usr/bin/env bash
# Round 3: decode after avoiding cuDNN (random 8B-shaped model; tokenizer carried in .data/tok), then, once the GGUF
# is assembled, a streaming profile and the speed benchmark again.
. benchmarks/device_env.sh
bench_log "gpu_round3_${1:-a}"
if [ "${1:-a}" = a ]; then
  run 200 python3 benchmarks/profile_decode.py --tokenizer .data/tok --out "$OUT/profile_decode"
else
  run 120 python3 benchmarks/profile_streaming.py --model "$MODEL" --out "$OUT/profile_streaming"
  run 200 python3 benchmarks/streaming_speed.py --model "$MODEL" --full-lengths 32768 --out "$OUT/streaming_speed"
  run 150 python3 benchmarks/dca_prefill.py --model "$MODEL" --smollm-length 65536 --lengths 65536 --out "$OUT/dca_prefill"
fi
