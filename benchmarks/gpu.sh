#!/usr/bin/env bash
# The one driver for the lent GPU machine (see benchmarks/README.md). Every call starts with
#   . benchmarks/device_env.sh
# then runs one step:
#   bash benchmarks/gpu.sh train      train the CCM adapter (GPU 0) and the RCC compressor (GPU 1) in parallel,
#                                     each for $BUDGET seconds; pack the adapters into $OUT (parts of 15 MB)
#                                     (4 GPUs: also the full-encoder RCC with RCC_FULL_ARGS, and `bench` if BENCH_BESIDE)
#   bash benchmarks/gpu.sh quality    the adapters just trained (/root/train) through the inference path: RCC gap and
#                                     recall against the shipped compressor, CCM gap and chat fact recall
#   bash benchmarks/gpu.sh bench      speed and memory (RCC vs plain vs DCA, SmolLM2 and an 8B-shaped model, 8k..1M),
#                                     the 1M-token stream with default options, out of memory on the GPU
#   bash benchmarks/gpu.sh decode     decode at batch 1 against the bandwidth bound (8B shape, 4k/32k/64k): the default
#                                     path, the eager path, compile: true and transformers' static cache + compile
#   bash benchmarks/gpu.sh serve      `longctx serve` under 1/16/64 concurrent sessions, full / dca / streaming, SmolLM2;
#                                     the 8B shape at 4k prompts, 1/16 sessions (needs .whl2: the server's wheels, with
#                                     opentelemetry-api; SERVE_LAYERS=1 also the layers' overhead, which needs .whl3)
#   bash benchmarks/gpu.sh tp         tensor parallel (a machine of 2+ GPUs): decode tokens/s of SmolLM2 and an 8B-shaped
#                                     model at tp 1, then 2, 3, 4 as the GPUs allow (SmolLM2's 9 heads: tp 3 only)
#   bash benchmarks/gpu.sh replicas   Ray Serve: 16 sessions on 1 then 2 replicas, one GPU each (a 2-GPU machine; Ray's
#                                     wheels carried in .whl4 and, split, in .whlsplit: see benchmarks/README.md)
#   bash benchmarks/gpu.sh rcc-sweep  several RCC trainings side by side on one GPU, each for $BUDGET seconds (a 135M model
#                                     leaves most of an H200 idle): RCC_RUNS="name:options;name:options" (appended to
#                                     the RCC defaults below); their logs and cards come back. Run again to continue
#                                     them from their checkpoints in /root/train/sweep-NAME.
#   bash benchmarks/gpu.sh memory     where RCC's peak GPU memory goes at 128k (the allocator's history), then RCC
#                                     against plain attention's peak at 32k and 128k
#   bash benchmarks/gpu.sh dca        DCA beside plain attention past its window (SmolLM2): perplexity of the same
#                                     tokens at 4k..128k and passkey retrieval (`longctx eval compare`), the attention
#                                     kernel against SDPA (dca_kernel.py; KERNEL=0 skips it)
#   bash benchmarks/gpu.sh streaming  StreamingLLM over 1M tokens (`longctx eval stream`): sinks against none, CUDA
#                                     graphs against eager, DCA inside; speed and memory from 1k to 1M tokens beside
#                                     the re-computing window (speed.py)
#   bash benchmarks/gpu.sh fetch DIR  pack another folder of /root/train into $OUT
#   bash benchmarks/gpu.sh mix-rescue [FIRST]  runs that will not finish inside the device time: stop them (their last
#                                     step saved), then their checkpoints' weights without the optimizer's moments, in
#                                     shards of 15 MB, four per call into $OUT from shard FIRST (a call returns at most
#                                     ~64 MB): call with 0, 4, 8, ... until it says `last`. Rebuild and finish on CPU:
#                                     benchmarks/train/rescue_checkpoint.py
#   bash benchmarks/gpu.sh mix-start  (one GPU) CCM and RCC side by side on the broad mix (benchmarks/train/broad-mix.yaml),
#                                     each from the adapter in /root/keep/init/{ccm,rcc} (MIX_INIT=0: from scratch) or
#                                     its checkpoint in /root/train/mix-*, for $BUDGET seconds, in the background (setsid:
#                                     the runs outlast the call); returns after their first log lines
#   bash benchmarks/gpu.sh mix-wait S up to S seconds: the runs' progress; once both have finished, their adapters
#                                     (parts of 15 MB) and logs into $OUT
# Options of the runs come from CCM_ARGS / RCC_ARGS (appended to the defaults below); CCM_DATA / RCC_DATA: another mix file.
set -u
OUT=${OUT:-bench-out}; mkdir -p "$OUT"
TEXT=${TEXT:-.data/pydocs-3.11.jsonl.gz}; MODEL=${MODEL:-/root/smol.gguf}; BUDGET=${BUDGET:-420}
W=/root/train; mkdir -p "$W"
longctx() { python3 -m longctx_llm.cli "$@"; }

pipes() {  # pipes NAME...: benchmarks/pipelines/NAME.yaml with the model at $MODEL, in /tmp; their paths, comma-joined
  local out=() n
  for n in "$@"; do
    sed "s#source: smollm2-135m-instruct#source: $MODEL#" "benchmarks/pipelines/$n.yaml" > "/tmp/$n.yaml"
    out+=("/tmp/$n.yaml")
  done
  (IFS=,; echo "${out[*]}")
}

pack() {  # pack FOLDER NAME: the folder's files (checkpoint excluded) as NAME.tar.part-* of at most 15 MB
  tar -C "$(dirname "$1")" --exclude=checkpoint -cf - "$(basename "$1")" | split -b 15000000 - "$OUT/$2.tar.part-"
}

case "${1:-}" in
  train)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    N=$(nvidia-smi -L | wc -l)
    COMMON=(--model "$MODEL" --model-name smollm2-135m-instruct --data "$TEXT" --steps 100000 --time-budget "$BUDGET")
    CUDA_VISIBLE_DEVICES=0 longctx train ccm "${COMMON[@]}" --out $W/ccm --batch 32 --segments 5 \
      --seg-len 64,128,128,192 --comp-tokens 1,2,4,8 --comp-weights 0.15,0.4,0.2,0.25 --modes concat,merge \
      --merge-share 0.25 --rank 32 --targets attention,mlp --lr 5e-4 --save-every 400 ${CCM_ARGS:-} \
      > $W/ccm.log 2>&1 &
    RCC=(--batch 16 --window 1024 --ratio 32 --windows 1,1,2 --encoder-rank 16 --encoder-targets attention,mlp
         --slot-rank 16 --lr 5e-4 --save-every 400)
    CUDA_VISIBLE_DEVICES=1 longctx train rcc "${COMMON[@]}" --out $W/rcc "${RCC[@]}" --encoder lora ${RCC_ARGS:-} \
      > $W/rcc.log 2>&1 &
    # more GPUs: the full-encoder comparison (RCC_FULL_ARGS), then `bench` beside the training
    if [ "$N" -ge 3 ] && [ -n "${RCC_FULL_ARGS:-}" ]; then
      CUDA_VISIBLE_DEVICES=2 longctx train rcc "${COMMON[@]}" --out $W/rcc-full "${RCC[@]}" --encoder full \
        ${RCC_FULL_ARGS} > $W/rcc-full.log 2>&1 &
    fi
    if [ "$N" -ge 4 ] && [ -n "${BENCH_BESIDE:-}" ]; then
      (CUDA_VISIBLE_DEVICES=3 OUT=$W/bench-out timeout "${BENCH_LIMIT:-470}" bash benchmarks/gpu.sh bench \
        > $W/bench.log 2>&1) &
    fi
    wait
    for f in ccm rcc rcc-full; do [ -f $W/$f.log ] && { echo "== $f"; grep -v -i "warn\|Loading" $W/$f.log | tail -25; }; done
    [ -f $W/bench.log ] && { echo "== bench"; tail -60 $W/bench.log; }
    [ -f $W/ccm/adapter.json ] && pack $W/ccm ccm
    [ -f $W/rcc/adapter.json ] && pack $W/rcc rcc
    # logs, the cards of every run (the full encoder's weights are too large to bring back) and the bench's files
    (cd $W && tar -cf "$OUT/logs.tar" --ignore-failed-read *.log */adapter.json bench-out 2>/dev/null)
    ls -la "$OUT"
    ;;
  rcc-sweep)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    RCC=(--model "$MODEL" --model-name smollm2-135m-instruct --data "$TEXT" --steps 100000 --time-budget "$BUDGET"
         --batch 16 --window 1024 --encoder lora --encoder-rank 16 --encoder-targets attention,mlp --lr 5e-4
         --save-every 200)
    IFS=';' read -ra RUNS <<< "${RCC_RUNS:?RCC_RUNS=\"name:options;...\"}"
    pids=()
    for run in "${RUNS[@]}"; do
      name=${run%%:*}; opts=${run#*:}
      # shellcheck disable=SC2086
      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True longctx train rcc "${RCC[@]}" --out $W/sweep-$name $opts \
        >> $W/sweep-$name.log 2>&1 &
      pids+=($!)
    done
    (while sleep 60; do nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader; done) &
    watch=$!
    wait "${pids[@]}"
    kill $watch
    for run in "${RUNS[@]}"; do
      name=${run%%:*}; echo "== $name: ${run#*:}"; grep -v -i "warn\|Loading" $W/sweep-$name.log | grep "step\|gap\|acc" | tail -12
    done
    (cd $W && tar -cf "$OUT/sweep.tar" sweep-*.log sweep-*/adapter.json 2>/dev/null)
    ls -la "$OUT"
    ;;
  memory)
    # RCC_RANDOM=--random-compressor: a random compressor of the shipped shape (when the shipped one is not carried)
    python3 benchmarks/profiles.py memory --model "$MODEL" --strategy rcc --length 131072 ${RCC_RANDOM:-} \
      --out "$OUT" 2>&1 | grep -v -i warn | tail -40
    python3 benchmarks/speed.py --model "$MODEL" --lengths 32768,131072 --variants full,rcc --decode-tokens 64 \
      ${RCC_RANDOM:-} --out "$OUT" 2>&1 | grep -v -i warn | tail -8
    ;;
  quality)  # the freshly trained adapters in /root/train through the inference path, on the GPU
    mkdir -p $W/quality
    printf 'model: {source: %s}\nstrategy: {name: rcc, compressor: %s}\n' "$MODEL" $W/rcc > $W/quality/rcc-new.yaml
    [ -f $W/rcc-full/adapter.json ] && printf 'model: {source: %s}\nstrategy: {name: rcc, compressor: %s}\n' \
      "$MODEL" $W/rcc-full > $W/quality/rcc-full.yaml
    P=$(ls $W/quality/rcc-*.yaml | paste -sd,)
    timeout 300 python3 -m longctx_llm.cli eval compare --pipelines "$P" --suite gap,recall --text "$TEXT" \
      --split heldout --context 1024,4096 --samples ${SAMPLES:-128} --out $W/quality/rcc 2>&1 | grep -v -i warn | tail -14
    printf 'model: {source: %s}\nmemory: {name: ccm, adapter: %s}\n' "$MODEL" $W/ccm > $W/quality/ccm-new.yaml
    timeout 150 python3 -m longctx_llm.cli eval gap $W/quality/ccm-new.yaml --text "$TEXT" --split heldout \
      --context 512 --samples ${SAMPLES:-128} --turn-tokens 128 --json > $W/quality/ccm-gap.json; tail -c 600 $W/quality/ccm-gap.json
    timeout 150 python3 benchmarks/ccm_chat.py --model "$MODEL" --adapter $W/ccm --text "$TEXT" --split heldout \
      --dialogues 40 --ks 1,5,20 --footprint '' --device cuda --out $W/quality/ccm-chat 2>&1 | grep -v -i warn | tail -12
    (cd $W && tar -cf "$OUT/quality.tar" quality)
    ls -la "$OUT"
    ;;
  bench)  # shortest first: a time limit cuts the longest (the 8B shape at 1M tokens)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    python3 benchmarks/profiles.py oom --model "$MODEL" 2>&1 | grep -v -i warn | tail -8
    printf 'model: {source: %s}\nstrategy: {name: streaming}\n' "$MODEL" > /tmp/stream.yaml
    longctx eval stream /tmp/stream.yaml --text "$TEXT" --tokens 1048576 --every 262144 --json > "$OUT/stream_default.json"
    cat "$OUT/stream_default.json"
    # beside the default (pieces of min(1024, window // 2)): pieces of 512, the default before 2026-12-01
    printf 'model: {source: %s}\nstrategy: {name: streaming, prefill_chunk_size: 512}\n' "$MODEL" > /tmp/stream-512.yaml
    longctx eval stream /tmp/stream-512.yaml --text "$TEXT" --tokens 1048576 --every 524288 --json \
      > "$OUT/stream_piece512.json"; cat "$OUT/stream_piece512.json"
    python3 benchmarks/speed.py --model "$MODEL" --lengths 8192,32768,131072,1048576 --out "$OUT" 2>&1 | grep -v -i warn | tail -12
    python3 benchmarks/speed.py --shape llama-8b --tokenizer .data/tok --layers 4 \
      --lengths 8192,32768,131072,524288,1048576 --out "$OUT" 2>&1 | grep -v -i warn | tail -18
    ;;
  decode)
    (cd benchmarks && python3 gpu_decode.py --contexts "${CONTEXTS:-4096,32768,65536}" --layers "${LAYERS:-32}" \
      --steps "${STEPS:-48}" --compile --tokenizer ../.data/tok --out "$OUT" 2>&1 | grep -v -i warn | tail -24)
    ;;
  serve)  # issue 24's GPU table (SERVE_LAYERS=1: also the layers' overhead, which needs .whl3's integrations)
    [ "${SERVE_LAYERS:-0}" = 1 ] && python3 benchmarks/layers_overhead.py --model "$MODEL" --device cuda --tokens 200 \
      --runs 5 2>&1 | grep -v -i warn | tail -7
    sv() {  # every row into $OUT/serve.log as it completes; the tables to the console
      echo "== serve_throughput.py $*" | tee -a "$OUT/serve.log"
      timeout "${SERVE_TIMEOUT:-240}" python3 benchmarks/serve_throughput.py --model "$MODEL" --device cuda --tokens 128 \
        "$@" > /tmp/sv.out 2>&1
      grep -v -i "warn\|Converting and de-quantizing" /tmp/sv.out >> "$OUT/serve.log"
      grep -E "^ *(strategy|full|dca|streaming|rcc) " /tmp/sv.out
    }
    sv --strategy full,dca,streaming --max-batch 1 --clients 1
    sv --strategy full,dca,streaming --max-batch 64 --clients 1,16,64
    sv --strategy full --max-batch 64 --clients 16 --client-procs 0  # the clients in the server's process (as 2026-12-07)
    sv --strategy full --max-batch 16 --clients 1,16 --direct         # the engine alone, no HTTP
    sv --shape llama-8b --layers 32 --vocab 49152 --prompt-tokens 4096 --strategy full,dca,streaming --max-batch 16 \
      --clients 1,16
    ;;
  tp)  # an nvidia-h100-x2 or more: model.tp through transformers' tensor parallelism, one process per GPU
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    N=$(nvidia-smi -L | wc -l)
    python3 benchmarks/tp_decode.py prepare --model "$MODEL" --folders $W/tp-models 2>&1 | grep -v -i warn | tail -2
    python3 benchmarks/tp_decode.py run --folders $W/tp-models --out "$OUT" 2>&1 | grep -v -i "warn\|Loading" | tail -4
    for tp in 2 3 4; do
      [ "$N" -ge "$tp" ] && python3 -m torch.distributed.run --standalone --nproc-per-node $tp \
        benchmarks/tp_decode.py run --folders $W/tp-models --out "$OUT" 2>&1 | grep -v -i "warn\|Loading" | tail -4
    done
    python3 benchmarks/tp_decode.py table --out "$OUT"
    ;;
  replicas)  # an nvidia-h200-x2 (or more): Ray Serve with 1 then 2 replicas, one GPU each (needs Ray: .whl4, .whlsplit)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    python3 benchmarks/replicas_throughput.py --model "$MODEL" --replicas "${REPLICAS:-1,2}" --clients 16 --tokens 128 \
      2>&1 | grep -v -i "warn\|INFO" | tail -6
    ;;
  mix-start)
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader
    mkdir -p ../shared/data && for f in /root/keep/data/*; do ln -sf "$f" ../shared/data/; done
    COMMON=(--model "$MODEL" --model-name smollm2-135m-instruct --steps 100000
            --time-budget "$BUDGET" --save-every 200 --lr "${MIX_LR:-3e-4}" --warmup 50)
    CCM=(--data "${CCM_DATA:-benchmarks/train/broad-mix.yaml}" --batch 32 --segments 5 --seg-len 64,128,128,192 --comp-tokens 1,2,4,8 --comp-weights 0.15,0.4,0.2,0.25
         --modes concat,merge --merge-share 0.25 --chat-share 0.3 --fact-share 0.3 --rank 32 --targets attention,mlp
         --eval-samples 256)
    RCC=(--data "${RCC_DATA:-benchmarks/train/broad-mix.yaml}" --batch 16 --ratio 32 --window 1024 --windows 1,1,2 --continuation 128 --cue 8 --span 64 --recon-share 0.6
         --encoder lora --encoder-rank 16 --encoder-targets attention,mlp --slot-rank 16 --reader-rank 16
         --eval-samples 128)
    if [ "${MIX_INIT:-1}" = 1 ]; then CCM+=(--init /root/keep/init/ccm); RCC+=(--init /root/keep/init/rcc); fi
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    # shellcheck disable=SC2086
    # MIX_ONLY=ccm|rcc trains one of the two
    case "${MIX_ONLY:-}" in ""|ccm|rcc) ;; *) echo "MIX_ONLY: expected ccm or rcc, got '$MIX_ONLY'" >&2; exit 2;; esac
    # shellcheck disable=SC2086
    [ "${MIX_ONLY:-ccm}" = ccm ] && setsid nohup python3 -m longctx_llm.cli --log-level info train ccm "${COMMON[@]}" \
      --out $W/mix-ccm "${CCM[@]}" ${CCM_ARGS:-} >> $W/mix-ccm.log 2>&1 < /dev/null &
    # shellcheck disable=SC2086
    [ "${MIX_ONLY:-rcc}" = rcc ] && setsid nohup python3 -m longctx_llm.cli --log-level info train rcc "${COMMON[@]}" \
      --out $W/mix-rcc "${RCC[@]}" ${RCC_ARGS:-} >> $W/mix-rcc.log 2>&1 < /dev/null &
    sleep "${MIX_SETTLE:-90}"
    for f in ccm rcc; do echo "== $f"; tail -4 $W/mix-$f.log; done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    ;;
  mix-wait)
    end=$((SECONDS + ${2:-500}))
    while [ $SECONDS -lt $end ]; do
      pgrep -f "longctx_llm[.]cli .*train (ccm|rcc)" >/dev/null || break
      sleep 15
    done
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
    for f in ccm rcc; do echo "== $f"; grep -v -i "warn\|Loading" $W/mix-$f.log | grep -v '^ ' | tail -6; done
    if ! pgrep -f "longctx_llm[.]cli .*train (ccm|rcc)" >/dev/null; then
      [ -f $W/mix-ccm/adapter.json ] && pack $W/mix-ccm mix-ccm
      [ -f $W/mix-rcc/adapter.json ] && pack $W/mix-rcc mix-rcc
      (cd $W && tar -cf "$OUT/mix-logs.tar" mix-*.log mix-*/adapter.json 2>/dev/null)
      ls -la "$OUT"
    fi
    ;;
  mix-rescue)
    if pgrep -f "longctx_llm[.]cli .*train (ccm|rcc)" >/dev/null; then
      pkill -INT -f "longctx_llm[.]cli .*train (ccm|rcc)"  # Ctrl-C: each run saves its last completed step
      for _ in $(seq 60); do pgrep -f "longctx_llm[.]cli .*train (ccm|rcc)" >/dev/null || break; sleep 1; done
    fi
    R=/root/rescue
    if [ ! -d $R ]; then
      mkdir -p $R && python3 benchmarks/train/rescue_checkpoint.py split $W/mix-ccm $W/mix-rcc --to $R
    fi
    first=${2:-0}; mapfile -t shards < <(cd $R && ls | sort)
    for f in "${shards[@]:$first:4}"; do cp "$R/$f" "$OUT/"; done
    [ $((first + 4)) -ge ${#shards[@]} ] && echo "last (${#shards[@]} files)" || echo "more: call again with $((first + 4))"
    ;;
  dca)  # LENGTHS / PASSKEY_LENGTHS ('' skips a suite), TRIALS: keys per length and depth, KERNEL=0: no kernel timing
    P=$(pipes ${DCA_PIPES:-full-128k dca dca-temp dca-3072})
    if [ -n "${LENGTHS-x}" ]; then
      longctx eval compare --pipelines "$P" --suite ppl --same-tokens --text "$TEXT" \
        --lengths "${LENGTHS:-4096,8192,16384,32768,65536,131072}" --out "$OUT/dca-ppl" 2>&1 | grep -v -i warn \
        | tail -30
    fi
    if [ -n "${PASSKEY_LENGTHS-x}" ]; then
      longctx eval compare --pipelines "$P" --suite passkey --key-nll --depths 10,30,50,70,90 --trials "${TRIALS:-5}" \
        --lengths "${PASSKEY_LENGTHS:-4096,8192,16384,32768,65536}" --out "$OUT/dca-passkey" 2>&1 | grep -v -i warn \
        | tail -30
    fi
    if [ "${KERNEL:-1}" = 1 ]; then
      PYTHONPATH=plugins/longctx-dca/src python3 benchmarks/dca_kernel.py --no-flex \
        --variants "${KERNEL_VARIANTS:-auto}" --out "$OUT" 2>&1 | grep -v -i warn | tail -24
    fi
    ;;
  streaming)  # TOKENS, EVERY: the stream; SPEED_LENGTHS ('' skips speed.py), RECOMPUTE: the re-computing window
    for p in ${STREAM_PIPES:-streaming streaming-nosink streaming-eager streaming-dca}; do
      longctx eval stream "$(pipes "$p")" --text "$TEXT" --tokens "${TOKENS:-1048576}" --every "${EVERY:-262144}" \
        --json > "$OUT/stream_$p.json"; echo "== $p"; cat "$OUT/stream_$p.json"
    done
    if [ -n "${SPEED_LENGTHS-x}" ]; then
      python3 benchmarks/speed.py --model "$MODEL" --variants streaming,streaming/cuda_graphs=false --decode-tokens 32 \
        --lengths "${SPEED_LENGTHS:-1024,4096,16384,65536,262144,1048576}" --recompute "${RECOMPUTE:-2048}" \
        --out "$OUT" 2>&1 | grep -v -i warn | tail -16
    fi
    ;;
  fetch)
    pack "$W/$2" "$(echo "$2" | tr / _)"; ls -la "$OUT" ;;
  *) echo "usage: gpu.sh train|rcc-sweep|memory|quality|bench|decode|serve|tp|replicas|dca|streaming|fetch DIR|" \
       "mix-start|mix-wait S" >&2
     exit 2 ;;
esac
