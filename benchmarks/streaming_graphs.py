"""StreamingLLM on real text with and without CUDA graphs: same numbers, how much faster (issue 4).

Streams ``--tokens`` tokens of ``--text`` through ``Engine.score`` (all logits, as ``longctx eval stream`` does) under
``streaming`` once eagerly and once replaying full-cache forwards from CUDA graphs; prints perplexity, the largest
per-token NLL difference, wall time and tokens/s of each, and the ratio.

    python benchmarks/streaming_graphs.py --model /root/smol.gguf --text .data/pydocs-3.11.jsonl.gz --out bench-out
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from _common import header, out_dir, print_table, write_json

from longctx_llm import Engine, ModelHandle
from longctx_llm.eval import read_text

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pydocs_tutorial.txt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(DEFAULT_TEXT))
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tokens", type=int, default=262144)
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--window", type=int, default=4092)
    p.add_argument("--piece", type=int, default=2046)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)

    loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
    ids = loaded.tokenizer(read_text(args.text)[: args.tokens * 8], add_special_tokens=False)["input_ids"]
    ids = (ids * (args.tokens // max(1, len(ids)) + 1))[: args.tokens]
    rows, nll = [], {}
    for graphs in (False, True):
        engine = Engine(loaded, strategy={"name": "streaming", "sink_tokens": args.sink, "window": args.window,
                                          "prefill_chunk_size": args.piece, "cuda_graphs": graphs})
        engine.score(ids[: 4 * args.piece], chunk_size=2 * args.piece)  # warm-up (and first capture)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        # score calls of whole pieces, so every forward is a full piece (the shape a graph was captured for)
        values = engine.score(ids, chunk_size=8 * args.piece).float().cpu()
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        label = "graphs" if graphs else "eager"
        nll[label] = values
        rows.append({"mode": label, "tokens": len(ids), "ppl": math.exp(values.mean().item()), "seconds": dt,
                     "tokens_per_s": len(ids) / dt})
    diff = (nll["graphs"] - nll["eager"]).abs()
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
    print(f"sink {args.sink} + window {args.window}, pieces of {args.piece}, {len(ids)} tokens of {args.text}")
    print_table(rows, ["mode", "tokens", "ppl", "seconds", "tokens_per_s", "speedup"])
    print(f"per-token NLL, graphs vs eager: max |diff| {diff.max().item():.3g}, mean |diff| {diff.mean().item():.3g}")
    write_json(out_dir(args.out), "streaming_graphs.json", {
        **header(str(loaded.device), model=args.model, dtype=str(loaded.dtype), sink=args.sink, window=args.window,
                 piece=args.piece),
        "rows": rows, "nll_max_abs_diff": diff.max().item(), "nll_mean_abs_diff": diff.mean().item(),
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
