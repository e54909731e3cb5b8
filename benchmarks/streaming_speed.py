"""StreamingLLM speed: streaming throughput, flat decode latency/memory, and the two baselines (issue 4).

1. Throughput: ``--tokens`` tokens streamed in pieces of ``--piece`` through a ``streaming`` state (last logits only),
   tokens/s. Along the way, at each checkpoint (1k, 4k, 16k... tokens streamed), the per-token decode latency
   (median of ``--decode-steps``) and the peak memory of those decode steps (CUDA: max allocated; CPU: RSS).
   On a GPU, with CUDA graphs (the default for full-cache forwards) and without, side by side (``--cuda-graphs``).
2. Sliding window with re-computation at the same window (paper §4.4, "up to 22.2x"): every new token re-encodes
   the last ``window`` tokens from scratch; ms/token beside streaming's decode ms/token. Eager, as the paper ran
   it, and on a GPU also replayed from a CUDA graph (the fastest this baseline can be).
3. Plain generation with a growing cache (``full``, DynamicCache) prefilled to each of ``--full-lengths``: decode
   ms/token and memory beside streaming's.

    python benchmarks/streaming_speed.py --out bench-out                                   # GPU defaults
    python benchmarks/streaming_speed.py --shape llama-8b --tokens 65536 --checkpoints 4096,16384,65536 --out bench-out
    python benchmarks/streaming_speed.py --device cpu --tokens 4096 --window 508 --full-lengths 2048 --checkpoints 1024,4096
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch
from _common import add_model_shape_args, header, out_dir, plot, print_table, random_llama, write_json

from longctx_llm import ModelHandle
from longctx_llm.builtins.full import FullStrategy
from longctx_llm.kernels import GraphRunner
from longctx_streaming import StreamingStrategy

logger = logging.getLogger("streaming_speed")


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20  # resident set


def decode_ms(state, device, steps: int, token: int = 198) -> tuple[float, float]:
    """Median ms per one-token forward, and peak memory (MiB) during those steps."""
    tok = torch.tensor([[token]], device=device)
    state.forward(tok)  # warm-up
    reset_peak(device)
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        state.forward(tok)
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), peak_mib(device)


def recompute_graphed_ms(loaded, ids, span: int, steps: int) -> float:
    """The re-computing window at its fastest: one static-shape forward over ``span`` tokens replayed from a CUDA
    graph (plain causal SDPA, no cache), so the comparison does not hinge on launch overhead."""
    model = loaded.model
    runner = GraphRunner(owner=model, capture_after=1)
    window = torch.empty(1, span, dtype=torch.long, device=ids.device)

    def forward(st):
        return model(input_ids=st["ids"], use_cache=False, logits_to_keep=1).logits

    times = []
    with torch.inference_mode():
        for i in range(steps + 2):
            window.copy_(ids[:, i % (ids.shape[1] - span + 1) :][:, :span])
            sync(ids.device)
            t0 = time.perf_counter()
            runner.run("recompute", {"ids": window}, forward)
            sync(ids.device)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[2:])  # the first call runs eagerly, the second captures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF model directory or .gguf path")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens streamed")
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--window", type=int, default=2044)
    p.add_argument("--piece", type=int, default=1024, help="tokens per forward while streaming")
    p.add_argument("--checkpoints", default="1024,4096,16384,65536,262144,1048576")
    p.add_argument("--decode-steps", type=int, default=32)
    p.add_argument("--recompute-steps", type=int, default=8, help="tokens timed for the re-computing window")
    p.add_argument("--full-lengths", default="32768,65536", help="growing-cache baseline lengths")
    p.add_argument("--shape", choices=["model", "llama-8b"], default="model",
                   help="model: --model itself; llama-8b: a random-weight Llama-3-8B-shaped model (--layers of 32), "
                        "the model size the paper's 22.2x was measured at")
    add_model_shape_args(p, layers=32)
    p.add_argument("--tokenizer", default=None, help="llama-8b shape: a tokenizer directory (instead of --model's)")
    p.add_argument("--cuda-graphs", choices=["both", "on", "off"], default="both",
                   help="streaming with CUDA graphs, without, or both side by side (GPU only)")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.shape == "llama-8b":  # the paper's setting (a 7B-class model): random weights, speed only
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else ModelHandle(args.model).get().tokenizer
        device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                              ("cpu" if args.device == "auto" else args.device))
        loaded = random_llama(args, tok, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    else:
        loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
    dev = loaded.device
    vocab = loaded.model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    stream_ids = torch.randint(0, vocab, (1, args.tokens), generator=gen).to(dev)  # speed does not depend on text

    modes = {"both": [True, False], "on": [True], "off": [False]}[args.cuda_graphs]
    if dev.type != "cuda":
        modes = [False]  # CUDA graphs are a GPU feature; on CPU the eager path is all there is
    checkpoints = sorted(c for c in (int(x) for x in args.checkpoints.split(",")) if c <= args.tokens)

    # ---- 1. throughput + decode latency at checkpoints, with and without CUDA graphs ---------------------------
    runs = {}
    for graphs in modes:
        label = "graphs" if graphs else "eager"
        strategy = StreamingStrategy(sink_tokens=args.sink, window=args.window, prefill_chunk_size=args.piece,
                                     cuda_graphs=graphs)
        state = strategy.new_state(loaded)
        latency_rows, fed, busy = [], 0, 0.0
        for cp in checkpoints:
            sync(dev)
            t0 = time.perf_counter()
            while fed < cp:
                n = min(args.piece, cp - fed)
                state.forward(stream_ids[:, fed : fed + n])
                fed += n
            sync(dev)
            busy += time.perf_counter() - t0
            ms, mem = decode_ms(state, dev, args.decode_steps)
            latency_rows.append({"tokens_streamed": cp, "decode_ms": ms, "peak_mib": mem,
                                 "cache_tokens": state.cache_tokens})
            logger.info("[%s] streamed %d: decode %.2f ms/token, peak %.0f MiB", label, cp, ms, mem)
        base_ms, base_mem = latency_rows[0]["decode_ms"], latency_rows[0]["peak_mib"]
        for r in latency_rows:
            r["latency_vs_first"] = r["decode_ms"] / base_ms
            r["memory_vs_first"] = r["peak_mib"] / base_mem
        captured = state._graphs.captured if state._graphs is not None else 0
        runs[label] = {"throughput_tokens_per_s": fed / busy, "tokens_streamed": fed, "latency": latency_rows,
                       "decode_ms": statistics.median(r["decode_ms"] for r in latency_rows[1:] or latency_rows),
                       "peak_mib": max(r["peak_mib"] for r in latency_rows), "graphs_captured": captured}
        print(f"[{label}] streaming throughput: {fed / busy:,.0f} tokens/s ({fed} tokens, pieces of {args.piece}, "
              f"sink {args.sink} + window {args.window}; CUDA graphs captured: {captured})")
        print_table(latency_rows, ["tokens_streamed", "decode_ms", "latency_vs_first", "peak_mib", "memory_vs_first",
                                   "cache_tokens"])
        del state
    if len(runs) == 2:
        print(f"throughput, graphs / eager: {runs['graphs']['throughput_tokens_per_s'] / runs['eager']['throughput_tokens_per_s']:.2f}x")
    main_label = "graphs" if "graphs" in runs else "eager"
    stream_ms = runs[main_label]["decode_ms"]

    # ---- 2. sliding window with re-computation (same window), eager and (on CUDA) from a CUDA graph ------------
    span = args.sink + args.window
    recompute = FullStrategy(prefill_chunk_size=span)
    ids = stream_ids[:, : span + args.recompute_steps]
    times = []
    for i in range(args.recompute_steps + 1):
        s = recompute.new_state(loaded)
        sync(dev)
        t0 = time.perf_counter()
        s.forward(ids[:, i : i + span])  # re-encode the whole window for one new token
        sync(dev)
        times.append((time.perf_counter() - t0) * 1000)
    recompute_ms = statistics.median(times[1:])
    recompute_graph_ms = recompute_graphed_ms(loaded, ids, span, args.recompute_steps) if dev.type == "cuda" else None

    # ---- 3. plain generation with a growing cache -------------------------------------------------------------
    baseline_rows = [{"method": f"streaming (sink {args.sink} + window {args.window}), {label}", "context": "unbounded",
                      "decode_ms": r["decode_ms"], "peak_mib": r["peak_mib"]} for label, r in runs.items()]
    baseline_rows.append({"method": "sliding window, recompute (eager, as in the paper)", "context": span,
                          "decode_ms": recompute_ms, "peak_mib": None})
    if recompute_graph_ms is not None:
        baseline_rows.append({"method": "sliding window, recompute (CUDA graph)", "context": span,
                              "decode_ms": recompute_graph_ms, "peak_mib": None})
    for n in [int(x) for x in args.full_lengths.split(",") if x]:
        s = FullStrategy(prefill_chunk_size=2048).new_state(loaded)
        s.forward(torch.randint(0, vocab, (1, n), generator=gen).to(dev))
        ms, mem = decode_ms(s, dev, args.decode_steps)
        baseline_rows.append({"method": "full, growing cache (eager)", "context": n, "decode_ms": ms, "peak_mib": mem})
        del s
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for r in baseline_rows:
        r[f"speedup_of_streaming_{main_label}"] = r["decode_ms"] / stream_ms
    print_table(baseline_rows, ["method", "context", "decode_ms", f"speedup_of_streaming_{main_label}", "peak_mib"])
    latency_rows = runs[main_label]["latency"]
    throughput = runs[main_label]["throughput_tokens_per_s"]

    out = out_dir(args.out)
    write_json(out, "streaming_speed.json", {
        **header(str(dev), model=args.model if args.shape == "model" else f"random llama-8b shape, {args.layers} layers", dtype=str(loaded.dtype), sink=args.sink, window=args.window,
                 piece=args.piece),
        "throughput_tokens_per_s": throughput, "runs": runs, "baselines": baseline_rows,
    })
    plot(out, "streaming_speed.png",
         {"decode ms/token": [(r["tokens_streamed"], r["decode_ms"]) for r in latency_rows],
          "peak memory / first": [(r["tokens_streamed"], r["memory_vs_first"]) for r in latency_rows]},
         "tokens streamed", "ms per token  |  memory ratio", "StreamingLLM: decode cost vs tokens streamed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
