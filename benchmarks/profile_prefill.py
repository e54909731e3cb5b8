"""Where a long prefill's time goes: full vs DCA (with and without its Triton kernels), timed, then profiled.

Prefill of ``--length`` tokens through the strategy states (fed in the engine's 2048-token pieces) on the random
8B-shaped Llama; each variant runs ``--repeats`` times (best kept: the first pays cuDNN plans and Triton compiles),
then once more under torch.profiler, whose top kernels/ops by CUDA and by CPU time are printed.

    python benchmarks/profile_prefill.py --tokenizer .data/tok --length 65536 --out bench-out
    python benchmarks/profile_prefill.py --device cpu --tokenizer .data/tok --length 2048 --hidden 256 --heads 4 \
        --kv-heads 2 --layers 2 --intermediate 512 --vocab 49152                                     # dry run
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import add_model_shape_args, out_dir, print_table, random_llama, write_json

import longctx_dca.attention as dca_attention
from longctx_llm import registry

VARIANTS = ("full", "dca", "dca_torch")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--length", type=int, default=65536)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS))
    add_model_shape_args(p)
    p.add_argument("--tokenizer", required=True, help="a tokenizer directory")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    from transformers import AutoTokenizer

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = random_llama(args, AutoTokenizer.from_pretrained(args.tokenizer), device, dtype)
    x = torch.randint(10, args.vocab, (1, args.length))
    fused_ops = dca_attention._fused_ops
    rows, tables = [], {}
    for name in args.variants.split(","):
        # dca_torch: the same DCA with its rotation and merge as PyTorch ops (no Triton)
        dca_attention._fused_ops = (lambda q, fused: None) if name == "dca_torch" else fused_ops
        strategy = registry.get("strategy", "full" if name == "full" else "dca")(max_length=args.length)

        def once() -> float:
            state = strategy.new_state(lm)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            state.forward(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - t

        times = [once() for _ in range(args.repeats)]
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            profiled = once()
        avg = prof.key_averages()
        cuda_key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        tables[name] = {"by_cuda": avg.table(sort_by=cuda_key, row_limit=15),
                        "by_cpu": avg.table(sort_by="self_cpu_time_total", row_limit=15)}
        rows.append({"variant": name, "length": args.length, "first_s": times[0], "best_s": min(times),
                     "profiled_s": profiled, "tok_s": args.length / min(times)})
        print(f"\n== {name}: times {['%.3f' % t for t in times]}\n-- by CUDA time\n{tables[name]['by_cuda']}\n"
              f"-- by CPU time\n{tables[name]['by_cpu']}", flush=True)
    dca_attention._fused_ops = fused_ops
    base = rows[0]["best_s"]
    for r in rows:
        r["x_first_variant"] = r["best_s"] / base
    print_table(rows, ["variant", "length", "first_s", "best_s", "x_first_variant", "tok_s", "profiled_s"])
    write_json(out_dir(args.out), "profile_prefill.json", {"rows": rows, "tables": tables})
    return 0


if __name__ == "__main__":
    sys.exit(main())
