"""Where a strategy's peak GPU memory goes: the CUDA allocator's history of one `longctx eval speed` measurement.

Records the allocator's history (PyTorch's ``torch.cuda.memory._record_memory_history``) around
``longctx_llm.eval.evaluate.speed`` for one prompt length, replays the trace to find the moment of the peak, and prints
the tensors alive at that moment grouped by the line of this project's code that allocated them (and by the
innermost frame), largest first. Memory allocated before the measurement (the weights) is one row.

    python benchmarks/memory_history.py --model /root/smol.gguf --strategy rcc --length 131072
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import _option_value, out_dir, print_table, random_compressor, write_json  # noqa: E402

from longctx_llm import Engine, ModelHandle  # noqa: E402
from longctx_llm.eval import evaluate  # noqa: E402

OURS = ("longctx_llm", "longctx_rcc", "longctx_dca", "longctx_ccm", "longctx_streaming")


def _where(frames: list[dict], ours: bool) -> str:
    for f in frames:  # innermost first
        name = f.get("filename", "")
        if not ours or any(p in name for p in OURS):
            short = "/".join(name.split("/")[-2:])
            return f"{short}:{f.get('line')} {f.get('name')}"
    return "(no frame)"


def peak_breakdown(trace: list[dict], before: int) -> tuple[int, int, dict, dict]:
    """Replay alloc / free events: the peak's bytes, its event index, and the live blocks there grouped two ways."""
    live: dict[int, dict] = {}
    total, best, best_i, best_live = before, before, -1, {}
    for i, e in enumerate(trace):
        a = e.get("action")
        if a == "alloc":
            live[e["addr"]] = e
            total += e["size"]
            if total > best:
                best, best_i, best_live = total, i, dict(live)
        elif a == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])["size"]
    ours, inner = collections.Counter(), collections.Counter()
    for e in best_live.values():
        ours[_where(e.get("frames", []), True)] += e["size"]
        inner[_where(e.get("frames", []), False)] += e["size"]
    return best, best_i, ours, inner


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--strategy", default="rcc", help="a strategy name with inline options: rcc/encode_batch=2")
    p.add_argument("--length", type=int, default=131072)
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--random-compressor", action="store_true",
                   help="rcc: a random compressor of the shipped shape (memory does not depend on its weights)")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("memory_history.py needs a CUDA device (the allocator's history)")
    loaded = ModelHandle(args.model, device="cuda").get()
    name, *pairs = args.strategy.split("/")
    spec = {"name": name, **{k: _option_value(v) for k, _, v in (x.partition("=") for x in pairs)}}
    if name == "rcc" and args.random_compressor:
        spec.setdefault("compressor", random_compressor(loaded))
    if name == "full":
        spec["max_length"] = args.length + 64
    engine = Engine(loaded, strategy=spec)
    ids = list(range(1000, 1000 + 4096))
    evaluate.speed(engine, ids, [8192], decode_tokens=4)  # warm-up: kernels, graph pools, the compressor's load
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    row = evaluate.speed(engine, ids, [args.length], decode_tokens=args.decode_tokens)[0]
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    trace = snap["device_traces"][torch.cuda.current_device()]
    best, at, ours, inner = peak_breakdown(trace, before)
    mib = 2**20
    print(json.dumps(row))
    print(f"allocated before the measurement (weights, compressor, pools): {before / mib:.1f} MiB")
    print(f"peak replayed from the trace: {best / mib:.1f} MiB at event {at} of {len(trace)} "
          f"(the allocator's own peak: {row.get('peak_memory_mib')} MiB)")
    rows = [{"where (our code)": k, "MiB": round(v / mib, 1)} for k, v in ours.most_common(args.top)]
    print_table(rows, ["where (our code)", "MiB"])
    rows2 = [{"where (innermost)": k, "MiB": round(v / mib, 1)} for k, v in inner.most_common(args.top)]
    print_table(rows2, ["where (innermost)", "MiB"])
    write_json(out_dir(args.out), f"memory_history_{name}_{args.length}.json", {
        "row": row, "before_mib": round(before / mib, 1), "peak_mib": round(best / mib, 1),
        "by_our_line": rows, "by_innermost": rows2, "device": torch.cuda.get_device_name(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": vars(args),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
