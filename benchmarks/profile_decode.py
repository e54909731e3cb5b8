"""Where a decode step's time goes at a long context: torch.profiler over a few steps, full vs DCA.

    python benchmarks/profile_decode.py --context 65536 --out bench-out
    python benchmarks/profile_decode.py --device cpu --context 2048 --hidden 256 --heads 4 --kv-heads 2 --layers 2   # dry run
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import add_model_shape_args, load_tokenizer, out_dir, random_llama, write_json

from longctx_llm import registry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--context", type=int, default=65536)
    p.add_argument("--steps", type=int, default=8)
    add_model_shape_args(p)
    p.add_argument("--strategies", default="full,dca")
    p.add_argument("--model", default="smollm2-135m-instruct", help="where the tokenizer comes from (alias, dir, .gguf)")
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory (skips loading --model)")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = random_llama(args, load_tokenizer(args.tokenizer, args.model), device, dtype)
    x = torch.randint(10, args.vocab, (1, args.context))
    results = {}
    for name in args.strategies.split(","):
        s = registry.get("strategy", name)(max_length=args.context + 64)
        state = s.new_state(lm)
        state.forward(x)
        one = torch.tensor([[17]], device=device)
        for _ in range(2):
            state.forward(one)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(args.steps):
                state.forward(one)
            if device.type == "cuda":
                torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) / args.steps * 1e3
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=15)
        print(f"\n== {name}: {ms:.2f} ms per decode step at context {args.context} (profiled)\n{table}", flush=True)
        results[name] = {"ms_per_step_profiled": ms, "table": table}
        del state
    write_json(out_dir(args.out), "profile_decode.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
