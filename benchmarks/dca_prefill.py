"""Prefill and decode speed with DCA vs plain attention (SDPA), end to end through the strategy states.

1. SmolLM2 prefill of ``--smollm-length`` tokens (default 128k): seconds, DCA vs full, ratio (target <= 1.2x).
2. An 8B-shaped Llama with random weights (hidden 4096, 32 heads, 8 KV heads, MLP 14336; ``--layers`` of its 32,
   default 4, so it fits beside a 128k cache): prefill tokens/s and peak GPU memory at ``--lengths``.
3. Decode tokens/s at ``--decode-context`` (64k) for that model, beside the memory-bandwidth bound: bytes read per
   token (weights + KV cache) over the measured device-copy bandwidth.

    python benchmarks/dca_prefill.py --out bench-out
    python benchmarks/dca_prefill.py --device cpu --smollm-length 2048 --lengths 1024,2048 --decode-context 1024 \
        --hidden 256 --layers 2 --heads 4 --kv-heads 2 --intermediate 512      # dry run
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import (
    add_model_shape_args, copy_bandwidth, header, out_dir, plot, print_table, random_llama, sync, write_json,
)

from longctx_llm import ModelHandle, registry


def strategies(max_length: int):
    full = registry.get("strategy", "full")(max_length=max_length)
    dca = registry.get("strategy", "dca")(max_length=max_length)
    return {"full": full, "dca": dca}


def prefill_seconds(strategy, loaded, ids, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        state = strategy.new_state(loaded)
        sync(loaded.device)
        t = time.perf_counter()
        state.forward(ids)
        sync(loaded.device)
        best = min(best, time.perf_counter() - t)
        del state
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--smollm-length", type=int, default=131072)
    p.add_argument("--lengths", default="32768,65536,131072")
    p.add_argument("--decode-context", type=int, default=65536)
    p.add_argument("--decode-steps", type=int, default=32)
    add_model_shape_args(p)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    gen = torch.Generator().manual_seed(0)
    results = {"info": header(args.device, layers=args.layers, hidden=args.hidden)}

    # 1. SmolLM2 prefill
    small = ModelHandle(args.model, device=args.device, dtype="auto").get()
    ids = torch.randint(10, 40000, (1, args.smollm_length), generator=gen)
    rows1 = []
    t = {name: prefill_seconds(s, small, ids, args.repeats) for name, s in strategies(args.smollm_length).items()}
    rows1.append({"model": args.model, "length": args.smollm_length, "full_s": t["full"], "dca_s": t["dca"],
                  "dca_over_full": t["dca"] / t["full"]})
    print("SmolLM2 prefill")
    print_table(rows1, ["model", "length", "full_s", "dca_s", "dca_over_full"])
    results["smollm_prefill"] = rows1
    del small

    # 2. 8B-shaped prefill
    big = random_llama(args, ModelHandle(args.model, device="cpu").get().tokenizer, device, dtype)
    lengths = [int(x) for x in args.lengths.split(",")]
    strats = strategies(max(max(lengths), args.decode_context + args.decode_steps))
    rows2 = []
    for n in lengths:
        row = {"length": n}
        x = torch.randint(10, args.vocab, (1, n), generator=gen)
        for name, s in strats.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec = prefill_seconds(s, big, x, 1)
            row[f"{name}_tok_s"] = n / sec
            row[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row["dca_over_full_time"] = row["full_tok_s"] / row["dca_tok_s"]
        rows2.append(row)
        print(f"  {row}", flush=True)
    print(f"\n8B-shaped Llama ({args.layers} of 32 layers, random weights) prefill")
    print_table(rows2, ["length", "full_tok_s", "dca_tok_s", "dca_over_full_time", "full_peak_gib", "dca_peak_gib"])
    results["prefill_8b_shape"] = rows2

    # 3. decode at a long context
    bw = copy_bandwidth(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in big.model.parameters())
    head_dim = args.hidden // args.heads
    kv_bytes = args.layers * 2 * args.kv_heads * head_dim * args.decode_context * torch.finfo(dtype).bits // 8
    bound = bw / (weight_bytes + kv_bytes)
    rows3 = []
    x = torch.randint(10, args.vocab, (1, args.decode_context), generator=gen)
    for name, s in strats.items():
        state = s.new_state(big)
        state.forward(x)
        tok = torch.tensor([[17]])
        state.forward(tok)  # warm-up step
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.decode_steps):
            state.forward(tok)
        sync(device)
        rate = args.decode_steps / (time.perf_counter() - t0)
        rows3.append({"strategy": name, "context": args.decode_context, "tok_s": rate, "bound_tok_s": bound,
                      "fraction_of_bound": rate / bound})
        del state
    print(f"\ndecode (copy bandwidth {bw / 1e9:.0f} GB/s, {(weight_bytes + kv_bytes) / 2**30:.2f} GiB read per token)")
    print_table(rows3, ["strategy", "context", "tok_s", "bound_tok_s", "fraction_of_bound"])
    results["decode"] = rows3
    results["info"]["copy_bandwidth_gb_s"] = bw / 1e9
    out = out_dir(args.out)
    write_json(out, "dca_prefill.json", results)
    plot(out, "dca_prefill.png", {f"{n} prefill tok/s": [(r["length"], r[f"{n}_tok_s"]) for r in rows2] for n in strats},
         "tokens", "tokens/s", f"8B-shaped Llama, {args.layers} layers, {results['info']['device']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
