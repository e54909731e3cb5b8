"""Strategies side by side on speed and memory, from 8k to 1M tokens: prefill, decode, peak memory, cache size.

On the embedded SmolLM2 (RCC: its shipped compressor) or on a random-weight Llama-3-8B-shaped model (``--shape
llama-8b``, ``--layers`` of its 32, a random compressor: speed and memory do not depend on weights), which no
pipeline file can load; through ``longctx_llm.eval.evaluate.speed``, the code of ``longctx eval speed``. Per length,
every variant's figures and their ratios to the first variant's. Lengths a strategy cannot take are rows with the
reason. ``--recompute W`` adds the re-computing sliding window (StreamingLLM §4.4: every new token re-encodes the
last W tokens, eagerly and, on a GPU, replayed from a CUDA graph) beside each variant's decode time per token.

    python benchmarks/speed.py --lengths 8192,32768,131072                           # full, DCA, RCC on SmolLM2
    python benchmarks/speed.py --shape llama-8b --tokenizer .data/tok --lengths 8192,...,1048576
    python benchmarks/speed.py --variants streaming,streaming/cuda_graphs=false --lengths 1024,...,1048576 \\
        --recompute 2048                               # StreamingLLM: flat decode and memory; graphs against eager
    python benchmarks/speed.py --device cpu --shape llama-8b --hidden 256 --heads 4 --kv-heads 2 --layers 2 \\
        --intermediate 512 --vocab 49152 --pretraining-length 2048 --lengths 512,1024 --decode-tokens 4 \\
        --variants full,dca,rcc,streaming --recompute 256                                          # dry run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_shape_args,
    header,
    load_shape,
    out_dir,
    print_table,
    random_compressor,
    sync,
    variant_specs,
    write_json,
)

from longctx_llm import Engine, LongctxError  # noqa: E402
from longctx_llm.eval import evaluate  # noqa: E402

COLUMNS = ["variant", "length", "prefill_s", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mib",
           "cache_mib", "prefill_vs_first", "decode_vs_first", "peak_vs_first", "cache_vs_first", "error"]


def bases(args, loaded, lengths: list[int]) -> dict[str, dict]:
    """The variants' strategies before inline options: plain attention given a window as long as the longest
    length (so it is measured past its pretraining length), DCA, RCC and StreamingLLM with their defaults."""
    rcc = {"name": "rcc"}
    if args.shape == "llama-8b" or args.random_compressor:
        rcc["compressor"] = random_compressor(loaded)
    return {"full": {"name": "full", "max_length": max(lengths) + args.decode_tokens + 64}, "dca": {"name": "dca"},
            "rcc": rcc, "streaming": {"name": "streaming"}}


def add_ratios(rows: list[dict]) -> None:
    """Each row's figures over the first variant's at the same length."""
    first = rows[0]["variant"] if rows else None
    base = {r["length"]: r for r in rows if r["variant"] == first and "error" not in r}
    for r in rows:
        b = base.get(r.get("length"))
        if not b or "error" in r:
            continue
        for key, col in (("prefill_s", "prefill_vs_first"), ("decode_tokens_per_s", "decode_vs_first"),
                         ("peak_memory_mib", "peak_vs_first"), ("cache_mib", "cache_vs_first")):
            r[col] = round(r[key] / b[key], 4) if b[key] else None


@torch.inference_mode()
def recompute_ms(loaded, span: int, steps: int, graph: bool) -> float:
    """Median ms per new token of the re-computing window: one forward over the last ``span`` tokens, no cache
    (plain causal SDPA); ``graph``: that forward at a fixed shape replayed from a CUDA graph, its fastest."""
    from longctx_llm.kernels import GraphRunner

    device = loaded.device
    vocab = loaded.model.config.get_text_config().vocab_size
    ids = torch.randint(10, vocab, (1, span + steps + 2), generator=torch.Generator().manual_seed(0)).to(device)
    window = torch.empty(1, span, dtype=torch.long, device=device)
    runner = GraphRunner(owner=loaded.model, capture_after=1) if graph else None

    def forward(st):
        return loaded.model(input_ids=st["ids"], use_cache=False, logits_to_keep=1).logits

    times = []
    for i in range(steps + 2):  # graph: the first call runs eagerly, the second captures
        window.copy_(ids[:, i : i + span])
        sync(device)
        t0 = time.perf_counter()
        if runner is not None:
            runner.run("recompute", {"ids": window}, forward)
        else:
            forward({"ids": window})
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times[2:])


def recompute_rows(args, loaded, rows: list[dict]) -> list[dict]:
    """Per window: the re-computing window's ms per token (its fastest way), and each variant's decode ms per token
    (at its last length that ran) with the ratio of the two."""
    decode_ms = {}
    for r in rows:
        if "error" not in r:
            decode_ms[r["variant"]] = 1000 / r["decode_tokens_per_s"]  # rows in --lengths order: the last one wins
    out = []
    for span in [int(x) for x in args.recompute.split(",") if x.strip()]:
        row = {"window": span, "recompute_eager_ms": recompute_ms(loaded, span, args.recompute_steps, False)}
        if loaded.device.type == "cuda":
            row["recompute_graph_ms"] = recompute_ms(loaded, span, args.recompute_steps, True)
        best = min(v for k, v in row.items() if k.endswith("_ms"))
        for name, ms in decode_ms.items():
            row[f"{name}: decode ms"] = round(ms, 3)
            row[f"recompute / {name}"] = round(best / ms, 2)
        out.append(row)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_args(p)
    p.add_argument("--lengths", default="8192,32768,131072")
    p.add_argument("--variants", default="full,dca,rcc",
                   help="comma-separated, of full, dca, rcc, streaming, each with inline strategy options after "
                        "slashes: rcc/encode_batch=2, streaming/window=4092/prefill_chunk_size=2046")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--random-compressor", action="store_true",
                   help="smollm2 shape: a random compressor of the shipped shape instead of the shipped one (speed and "
                        "memory do not depend on its weights; the llama-8b shape always takes one)")
    p.add_argument("--recompute", default="", help="windows of the re-computing sliding window baseline, e.g. 2048")
    p.add_argument("--recompute-steps", type=int, default=8, help="new tokens timed for the re-computing window")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    loaded = load_shape(args)
    ids = list(range(1000, 1000 + 4096))
    rows = []
    for name, spec in variant_specs(args.variants, bases(args, loaded, lengths)).items():
        try:
            engine = Engine(loaded, strategy=spec)
            out = evaluate.speed(engine, ids, lengths, decode_tokens=args.decode_tokens)
            del engine
        except LongctxError as e:  # this variant cannot run on this model at all: say why, go on
            out = [{"error": str(e)}]
        for r in out:
            rows.append({"variant": name, **{k: v for k, v in r.items() if k != "strategy"}})
            print(rows[-1], flush=True)
    add_ratios(rows)
    print()
    print_table(rows, COLUMNS)
    recompute = recompute_rows(args, loaded, rows) if args.recompute else []
    if recompute:
        print("\nre-computing sliding window: ms per new token, against each variant's decode step")
        print_table(recompute, list(dict.fromkeys(k for r in recompute for k in r)))
    write_json(out_dir(args.out), f"speed_{args.shape}.json", {**header(str(loaded.device), args=vars(args)),
                                                               "rows": rows, "recompute": recompute})
    return 0


if __name__ == "__main__":
    sys.exit(main())
