"""Where a streaming piece's time goes: torch.profiler over a few pieces once the ring cache is full.

    python benchmarks/profile_streaming.py --model /root/smol.gguf --out bench-out
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import out_dir, write_json

from longctx_llm import ModelHandle, registry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="auto")
    p.add_argument("--window", type=int, default=2044)
    p.add_argument("--piece", type=int, default=1024)
    p.add_argument("--warm-pieces", type=int, default=8)
    p.add_argument("--pieces", type=int, default=8)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    lm = ModelHandle(args.model, device=args.device).get()
    strategy = registry.get("strategy", "streaming")(sink_tokens=4, window=args.window, prefill_chunk_size=args.piece)
    state = strategy.new_state(lm)
    gen = torch.Generator().manual_seed(0)
    pieces = [torch.randint(10, 40000, (1, args.piece), generator=gen) for _ in range(args.warm_pieces + args.pieces)]
    for x in pieces[: args.warm_pieces]:
        state.forward(x)
    cuda = lm.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts) as prof:
        for x in pieces[args.warm_pieces :]:
            state.forward(x)
        if cuda:
            torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / args.pieces
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=18)
    print(f"== streaming piece of {args.piece}: {sec * 1e3:.2f} ms ({args.piece / sec:,.0f} tokens/s, profiled)\n{table}")
    write_json(out_dir(args.out), "profile_streaming.json", {"ms_per_piece": sec * 1e3, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
