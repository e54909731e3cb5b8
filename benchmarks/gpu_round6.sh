#!/usr/bin/env bash
# Round 6: CUDA graphs for StreamingLLM (tests on the GPU, throughput, decode vs the re-computing window), and DCA's
# perplexity over the same tokens at every length and the classic passkey test.
#   call 1 (carry .whl .gguf/part_aa .data):  bash benchmarks/gpu_round6.sh a
#   call 2 (carry .whl .gguf/part_ab .data):  bash benchmarks/gpu_round6.sh b
#   then, on a fresh machine: c (carry .whl .gguf/part_aa .data), d (carry .whl .gguf/part_ab .data)
#   and again: e (carry .whl .gguf/part_aa .data), f (carry .whl .gguf/part_ab .data); likewise i, j
# (the DCA kernel numbers of this round came from benchmarks/dca_kernel.py; see RESULTS.md for its command)
. benchmarks/device_env.sh
case "$1" in
a)
  bench_log gpu_round6a
  export LONGCTX_TEST_TOKENIZER=.data/tok
  run 200 python3 -m pytest -q -p no:cacheprovider -rs plugins/longctx-streaming/tests/test_cuda_graphs.py \
    plugins/longctx-streaming/tests/test_exactness.py
  ;;
b)
  bench_log gpu_round6b
  run 200 python3 benchmarks/streaming_speed.py --model "$MODEL" --window 4092 --piece 2046 --full-lengths 32768 \
    --out "$OUT/speed_4k"
  run 100 python3 benchmarks/streaming_graphs.py --model "$MODEL" --text "$TEXT" --tokens 262144 --out "$OUT/graphs"
  run 250 python3 benchmarks/dca_ppl.py --model "$MODEL" --text "$TEXT" --lengths 4096,8192,16384,32768,65536,131072 \
    --variants full,dca,dca_temp --out "$OUT/dca_ppl"
  ;;
c)  # the paper's model size: a random-weight Llama-3-8B-shaped model (32 layers), no GGUF needed; window sweep
  bench_log gpu_round6c
  export LONGCTX_TEST_TOKENIZER=.data/tok
  run 100 python3 -m pytest -q -p no:cacheprovider plugins/longctx-streaming/tests/test_cuda_graphs.py
  for wp in 2044:1022 4092:2046 8188:4094; do
    run 200 python3 benchmarks/streaming_speed.py --shape llama-8b --tokenizer .data/tok --window ${wp%:*} \
      --piece ${wp#*:} --tokens 32768 --checkpoints 8192,32768 --full-lengths "" --decode-steps 16 \
      --out "$OUT/speed_8b_${wp%:*}"
  done
  ;;
d)
  bench_log gpu_round6d
  run 120 python3 benchmarks/streaming_speed.py --model "$MODEL" --window 4092 --piece 2046 --full-lengths "" \
    --cuda-graphs on --out "$OUT/speed_4k_graphs"
  run 480 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --lengths 4096,8192,16384,32768,65536 \
    --depths 10,30,50,70,90 --trials 5 --filler repeat --variants full,dca,dca_temp --out "$OUT/needle"
  ;;
e)  # only brings the GGUF's first half (the next call, on the same warm machine, brings the second)
  bench_log gpu_round6e
  ;;
f)  # prefill/decode with this round's DCA kernel; streaming decode from 1k tokens with a window that is full at 1k
  bench_log gpu_round6f
  run 300 python3 benchmarks/dca_prefill.py --model "$MODEL" --out "$OUT/dca_prefill"
  run 120 python3 benchmarks/streaming_speed.py --model "$MODEL" --window 1020 --piece 510 --full-lengths "" \
    --cuda-graphs on --out "$OUT/speed_1k_graphs"
  ;;
i)  # only brings the GGUF's first half (j follows on the same warm machine)
  bench_log gpu_round6i
  ;;
j)  # passkey at 32k/64k under two other DCA geometries (the default one is in d)
  bench_log gpu_round6j
  run 200 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --lengths 32768,65536 --trials 5 \
    --filler repeat --variants dca --dca-local-window 512 --out "$OUT/needle_lw512"
  run 200 python3 benchmarks/needle.py --model "$MODEL" --text "$TEXT" --lengths 32768,65536 --trials 5 \
    --filler repeat --variants dca --dca-chunk-size 4096 --dca-local-window 512 --out "$OUT/needle_cs4096"
  ;;
esac
