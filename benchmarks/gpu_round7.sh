#!/usr/bin/env bash
# Round 7: why DCA's passkey retrieval drops past 16k on SmolLM2, and which DCA settings (geometry, temperature
# exponent, temperature on the earlier chunks only) retrieve best; graded by the teacher-forced key NLL too.
#   call a (carry .whl .gguf/part_aa .data), then at once b (carry .whl .gguf/part_ab .data), then at once c (same)
#   on a fresh machine: a, then at once d (carry .whl .gguf/part_ab .data): the smaller geometries that retrieve in
#   b/c, measured with round 6's protocols (perplexity on the same tokens; classic passkey, 5 depths x 5 keys)
#   on a fresh machine: a, then at once e: the temperature on earlier chunks, alone and with chunk_size 3072
#   on a fresh machine: a, then at once f: a geometry between 3072 and the default (3584/448)
. benchmarks/device_env.sh
DEPTHS=10,20,30,40,50,60,70,80,90
sweep() {  # sweep LABEL VARIANT: passkey at 16k/32k/64k, 9 depths x 2 keys, with the key NLL
  run 200 python3 benchmarks/needle.py --model "$MODEL" --lengths 16384,32768,65536 --depths $DEPTHS --trials 2 \
    --filler repeat --key-nll --variants "$2" --out "$OUT/needle_$1"
}
case "$1" in
a)
  bench_log gpu_round7a
  ;;
b)
  bench_log gpu_round7b
  run 120 python3 benchmarks/needle.py --model "$MODEL" --lengths 4096,8192 --depths $DEPTHS --trials 2 \
    --filler repeat --key-nll --variants full --out "$OUT/needle_full"
  sweep dca dca
  sweep p1 dca/temperature_scaling=true/temperature_power=1
  sweep earlier dca/temperature_scaling=true/temperature_parts=earlier
  sweep cs2048 dca/chunk_size=2048/local_window=256
  ;;
c)
  bench_log gpu_round7c
  sweep cs1024 dca/chunk_size=1024/local_window=128
  sweep cs3072 dca/chunk_size=3072/local_window=384
  sweep earlier_p1 dca/temperature_scaling=true/temperature_power=1/temperature_parts=earlier
  sweep cs2048_earlier dca/chunk_size=2048/local_window=256/temperature_scaling=true/temperature_parts=earlier
  # (the call reached its 10-minute limit during the last sweep; the perplexity of the winners is measured in d)
  ;;
d)
  bench_log gpu_round7d
  run 200 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" \
    --lengths 4096,8192,16384,32768,65536,131072 --out "$OUT/dca_ppl_geometry" \
    --variants dca,dca/chunk_size=3072/local_window=384,dca/chunk_size=2048/local_window=256,dca/chunk_size=1024/local_window=128
  for g in 3072:384 2048:256; do
    run 150 python3 benchmarks/needle.py --model "$MODEL" --lengths 16384,32768,65536 --trials 5 --filler repeat \
      --variants dca/chunk_size=${g%:*}/local_window=${g#*:} --out "$OUT/needle25_cs${g%:*}"
  done
  run 40 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --lengths 4096,8192 --trials 5 --filler text \
    --variants full --out "$OUT/needle25_text_full"
  run 100 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --lengths 16384,32768,65536 --trials 5 \
    --filler text --variants dca/chunk_size=3072/local_window=384 --out "$OUT/needle25_text_cs3072"
  ;;
e)
  bench_log gpu_round7e
  E1=dca/chunk_size=3072/local_window=384/temperature_scaling=true/temperature_parts=earlier
  E2=dca/temperature_scaling=true/temperature_parts=earlier
  run 150 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" \
    --lengths 4096,8192,16384,32768,65536,131072 --out "$OUT/dca_ppl_earlier" --variants "$E1,$E2"
  run 150 python3 benchmarks/needle.py --model "$MODEL" --lengths 16384,32768,65536 --trials 5 --filler repeat \
    --variants "$E1" --out "$OUT/needle25_cs3072_earlier"
  ;;
f)
  bench_log gpu_round7f
  F=dca/chunk_size=3584/local_window=448
  run 60 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" --lengths 4096,131072 --out "$OUT/dca_ppl_3584" \
    --variants "$F"
  run 130 python3 benchmarks/needle.py --model "$MODEL" --lengths 32768,65536 --trials 5 --filler repeat \
    --variants "$F" --out "$OUT/needle25_cs3584"
  ;;
esac
