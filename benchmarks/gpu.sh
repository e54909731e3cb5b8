#!/usr/bin/env bash
# The one driver for the lent GPU machine (see benchmarks/README.md). Every call starts with
#   . benchmarks/device_env.sh
# then runs one step:
#   bash benchmarks/gpu.sh train      train the CCM adapter (GPU 0) and the RCC compressor (GPU 1) in parallel,
#                                     each for $BUDGET seconds; pack the adapters into $OUT (parts of 15 MB)
#   bash benchmarks/gpu.sh bench      speed and memory (RCC vs plain vs DCA, SmolLM2 and an 8B-shaped model, 8k..1M),
#                                     the 1M-token stream with default options, CCM/RCC quality with more samples
#   bash benchmarks/gpu.sh fetch DIR  pack another folder of /root/train into $OUT
# Options of the runs come from CCM_ARGS / RCC_ARGS (appended to the defaults below).
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
TEXT=${TEXT:-.data/pydocs-3.11.jsonl.gz}; MODEL=${MODEL:-/root/smol.gguf}; BUDGET=${BUDGET:-420}
W=/root/train; mkdir -p "$W"
longctx() { python3 -m longctx_llm.cli "$@"; }

pack() {  # pack FOLDER NAME: the folder's files (checkpoint excluded) as NAME.tar.part-* of at most 15 MB
  tar -C "$(dirname "$1")" --exclude=checkpoint -cf - "$(basename "$1")" | split -b 15000000 - "$OUT/$2.tar.part-"
}

case "${1:-}" in
  train)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    COMMON=(--model "$MODEL" --model-name smollm2-135m-instruct --data "$TEXT" --steps 100000 --time-budget "$BUDGET")
    CUDA_VISIBLE_DEVICES=0 longctx train ccm "${COMMON[@]}" --out $W/ccm --batch 32 --segments 5 \
      --seg-len 64,128,128,192 --comp-tokens 1,2,4,8 --comp-weights 0.15,0.4,0.2,0.25 --modes concat,merge \
      --merge-share 0.25 --rank 32 --targets attention,mlp --lr 5e-4 --save-every 400 ${CCM_ARGS:-} \
      > $W/ccm.log 2>&1 &
    CUDA_VISIBLE_DEVICES=1 longctx train rcc "${COMMON[@]}" --out $W/rcc --batch 16 --window 1024 --ratio 32 \
      --windows 1,1,2 --encoder lora --encoder-rank 16 --encoder-targets attention,mlp --slot-rank 16 \
      --lr 5e-4 --save-every 400 ${RCC_ARGS:-} > $W/rcc.log 2>&1 &
    wait
    grep -v -i "warn\|Loading" $W/ccm.log | tail -40; grep -v -i "warn\|Loading" $W/rcc.log | tail -30
    cp $W/ccm.log $W/rcc.log "$OUT/"
    [ -f $W/ccm/adapter.json ] && pack $W/ccm ccm
    [ -f $W/rcc/adapter.json ] && pack $W/rcc rcc
    ls -la "$OUT"
    ;;
  bench)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    python3 benchmarks/rcc_speed.py --lengths 8192,32768,131072 --out "$OUT" 2>&1 | grep -v -i warn | tail -12
    python3 benchmarks/rcc_speed.py --shape llama-8b --tokenizer .data/tok --layers 4 \
      --lengths 8192,32768,131072,524288,1048576 --out "$OUT" 2>&1 | grep -v -i warn | tail -18
    printf 'model: {source: %s}\nstrategy: {name: streaming}\n' "$MODEL" > /tmp/stream.yaml
    longctx eval stream /tmp/stream.yaml --text "$TEXT" --tokens 1048576 --every 262144 --json > "$OUT/stream_default.json"
    cat "$OUT/stream_default.json"
    for p in rcc ccm-concat-k2; do sed "s#smollm2-135m-instruct#$MODEL#" benchmarks/pipelines/$p.yaml > /tmp/$p.yaml; done
    longctx eval compare --pipelines /tmp/rcc.yaml --suite gap,recall --text "$TEXT" --split heldout \
      --context 1024,4096 --samples 256 --out "$OUT/rcc-quality" 2>&1 | tail -12
    longctx eval gap /tmp/ccm-concat-k2.yaml --text "$TEXT" --split heldout --context 512 --samples 256 \
      --turn-tokens 128 --json > "$OUT/ccm-gap.json"; cat "$OUT/ccm-gap.json"
    ;;
  fetch)
    pack "$W/$2" "$(echo "$2" | tr / _)"; ls -la "$OUT" ;;
  *) echo "usage: gpu.sh train|bench|fetch DIR" >&2; exit 2 ;;
esac
