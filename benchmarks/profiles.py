"""Where a GPU's time and memory go: torch.profiler over a strategy's forwards, the CUDA allocator's history of one
``longctx eval speed`` measurement, and what happens when memory runs out.

``steps``: strategies side by side on the embedded SmolLM2 or a random-weight Llama-3-8B shape. ``--context``
tokens are fed first, then ``--steps`` forwards of ``--piece`` tokens each are timed, then as many again run under
torch.profiler, whose top operations (by device time, and by CPU time) are printed per variant. ``--piece 1`` is a
decode step at that context; ``--fresh`` puts every forward on a fresh state (a prefill of ``--piece`` tokens; the
first pays cuDNN plans and Triton compiles, so the first and the best are reported). Variant ``dca_torch`` is DCA
with its query rotation and merge as PyTorch ops instead of its Triton kernels.

    python benchmarks/profiles.py steps --shape llama-8b --tokenizer .data/tok --context 65536 --piece 1   # decode
    python benchmarks/profiles.py steps --shape llama-8b --tokenizer .data/tok --variants full,dca,dca_torch \\
        --context 0 --piece 65536 --steps 3 --fresh                                                      # prefill
    python benchmarks/profiles.py steps --variants streaming/window=2044/prefill_chunk_size=1024 --context 8192 \\
        --piece 1024                                                                    # a streaming piece
    python benchmarks/profiles.py steps --device cpu --shape llama-8b --hidden 256 --heads 4 --kv-heads 2 \\
        --layers 2 --intermediate 512 --vocab 49152 --context 1024 --piece 1 --steps 4              # dry run

``memory`` (CUDA): records the allocator's history around ``evaluate.speed`` for one prompt length, replays it to
the peak, and prints the tensors alive there grouped by the line of this project's code that allocated them (and by
the innermost frame), largest first; memory allocated before the measurement (the weights) is one row.

    python benchmarks/profiles.py memory --model /root/smol.gguf --strategy rcc --length 131072

``oom`` (CUDA, issue 13): a request whose prompt cannot fit in the memory left to the process (capped with
``torch.cuda.set_per_process_memory_fraction``) must end in a ``ResourceError`` naming the prompt, and the next
requests on the same engine and session must answer. One row per request.

    python benchmarks/profiles.py oom --model /root/smol.gguf --fraction 0.008 --tokens 60000
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    _option_value,
    add_shape_args,
    load_shape,
    out_dir,
    print_table,
    random_compressor,
    sync,
    variant_specs,
    write_json,
)

# ---- steps ----------------------------------------------------------------------------------------------------------


def _forward_ms(state, ids, device) -> float:
    sync(device)
    t = time.perf_counter()
    state.forward(ids)
    sync(device)
    return (time.perf_counter() - t) * 1000


def _top_ops(prof, device) -> dict[str, str]:
    avg = prof.key_averages()
    by_device = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    try:
        first = avg.table(sort_by=by_device, row_limit=15)
    except (AttributeError, KeyError, ValueError):  # older torch names it cuda_time_total
        first = avg.table(sort_by="cuda_time_total", row_limit=15)
    return {"by_device": first, "by_cpu": avg.table(sort_by="self_cpu_time_total", row_limit=15)}


def profile_steps(args) -> int:
    from longctx_llm import Engine

    loaded = load_shape(args)
    device = loaded.device
    vocab = loaded.model.config.get_text_config().vocab_size
    gen = torch.Generator().manual_seed(0)
    context = torch.randint(10, vocab, (1, args.context), generator=gen).to(device) if args.context else None
    piece = torch.randint(10, vocab, (1, args.piece), generator=gen).to(device)
    total = args.context + 3 * args.steps * args.piece + 64
    bases = {"full": {"name": "full", "max_length": total}, "dca": {"name": "dca"},
             "dca_torch": {"name": "dca", "torch_ops": True}, "streaming": {"name": "streaming"},
             "rcc": {"name": "rcc", **({"compressor": random_compressor(loaded)} if args.shape == "llama-8b" else {})}}
    specs = variant_specs(args.variants, bases)
    dca_attention = None
    if any(spec.get("torch_ops") for spec in specs.values()):
        import longctx_dca.attention as dca_attention

        fused_ops = dca_attention._fused_ops
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda"
                                                     else [])
    rows, tables = [], {}
    for name, spec in specs.items():
        torch_ops = spec.pop("torch_ops", False)
        if dca_attention is not None:  # dca_torch: no Triton kernels, whatever the device
            dca_attention._fused_ops = (lambda q, fused: None) if torch_ops else fused_ops
        strategy = Engine(loaded, strategy=spec).strategy

        def state_at_context():
            state = strategy.new_state(loaded, 1)
            if context is not None:
                state.forward(context)
            return state

        if args.fresh:  # every forward a prefill on a fresh state
            times = [_forward_ms(state_at_context(), piece, device) for _ in range(args.steps)]
            state = state_at_context()
            with torch.profiler.profile(activities=acts) as prof:
                state.forward(piece)
                sync(device)
        else:
            state = state_at_context()
            for _ in range(2):  # warm-up: the first step runs eagerly, the second captures a CUDA graph
                state.forward(piece)
            times = [_forward_ms(state, piece, device) for _ in range(args.steps)]
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(args.steps):
                    state.forward(piece)
                sync(device)
        del state
        tables[name] = _top_ops(prof, device)
        best = min(times)
        rows.append({"variant": name, "context": args.context, "piece": args.piece, "first_ms": times[0],
                     "median_ms": statistics.median(times), "best_ms": best, "tokens_per_s": args.piece / best * 1e3})
        print(f"\n== {name}: {args.piece} tokens at context {args.context}, {statistics.median(times):.3f} ms "
              f"(median of {args.steps})\n-- by {'CUDA' if device.type == 'cuda' else 'CPU'} time\n"
              f"{tables[name]['by_device']}\n-- by CPU time\n{tables[name]['by_cpu']}", flush=True)
    if dca_attention is not None:
        dca_attention._fused_ops = fused_ops
    for r in rows:
        r["x_first_variant"] = r["best_ms"] / rows[0]["best_ms"]
    print_table(rows, ["variant", "context", "piece", "first_ms", "median_ms", "best_ms", "x_first_variant",
                       "tokens_per_s"])
    write_json(out_dir(args.out), "profile_steps.json", {"rows": rows, "tables": tables, "args": vars(args)})
    return 0


# ---- memory ---------------------------------------------------------------------------------------------------------

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


def profile_memory(args) -> int:
    from longctx_llm import Engine, ModelHandle
    from longctx_llm.eval import evaluate

    if not torch.cuda.is_available():
        raise SystemExit("profiles.py memory needs a CUDA device (the allocator's history)")
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


# ---- oom ------------------------------------------------------------------------------------------------------------


def profile_oom(args) -> int:
    from longctx_llm import Engine, LongctxError, ResourceError

    if not torch.cuda.is_available():
        print("profiles.py oom: needs a CUDA device", file=sys.stderr)
        return 2
    torch.cuda.set_per_process_memory_fraction(args.fraction)
    cap = torch.cuda.get_device_properties(0).total_memory * args.fraction / 2**30
    engine = Engine(args.model, strategy={"name": args.strategy}, generation={"max_new_tokens": 8, "temperature": 0})
    word = "lorem ipsum dolor sit amet consectetur "
    rows = []
    for name, prompt in (
        ("small", "What is the capital of France?"),
        ("too big", word * (args.tokens // 14)),  # 14 tokens per repetition (SmolLM2)
        ("small again", "What is the capital of France?"),
        ("session turn after the failure", "And of Italy?"),
    ):
        t0 = time.perf_counter()
        try:
            sid = "s" if name.startswith("session") or name == "too big" else None
            out = engine.chat(prompt, session_id=sid)
            result = f"answered: {out.text[:40]!r}"
        except ResourceError as e:
            result = f"ResourceError: {str(e)[:110]}"
        except LongctxError as e:
            result = f"{type(e).__name__}: {str(e)[:110]}"
        rows.append({"request": name, "seconds": round(time.perf_counter() - t0, 2), "result": result,
                     "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3)})
    print(f"GPU memory cap: {cap:.2f} GiB ({args.fraction} of {torch.cuda.get_device_name(0)})")
    print_table(rows, ["request", "seconds", "allocated_gib", "result"])
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps", help="torch.profiler over a strategy's forwards, variants side by side")
    add_shape_args(s)
    s.add_argument("--variants", default="full,dca",
                   help="comma-separated, of full, dca, dca_torch, streaming, rcc, each with inline strategy options "
                        "after slashes: streaming/window=2044")
    s.add_argument("--context", type=int, default=65536, help="tokens fed before the timed forwards")
    s.add_argument("--piece", type=int, default=1, help="tokens per timed forward (1: a decode step)")
    s.add_argument("--steps", type=int, default=8, help="forwards timed, then as many profiled")
    s.add_argument("--fresh", action="store_true", help="each forward on a fresh state (a prefill)")
    s.add_argument("--out", default="bench-out")
    m = sub.add_parser("memory", help="the CUDA allocator's history of one `eval speed` measurement, at its peak")
    m.add_argument("--model", default="smollm2-135m-instruct")
    m.add_argument("--strategy", default="rcc", help="a strategy name with inline options: rcc/encode_batch=2")
    m.add_argument("--length", type=int, default=131072)
    m.add_argument("--decode-tokens", type=int, default=16)
    m.add_argument("--top", type=int, default=14)
    m.add_argument("--random-compressor", action="store_true",
                   help="rcc: a random compressor of the shipped shape (memory does not depend on its weights)")
    m.add_argument("--out", default="bench-out")
    o = sub.add_parser("oom", help="out of memory on the GPU: the engine reports it and keeps serving")
    o.add_argument("--model", default="smollm2-135m-instruct")
    o.add_argument("--fraction", type=float, default=0.008, help="share of the GPU's memory this process may use")
    o.add_argument("--tokens", type=int, default=60000, help="prompt length of the request that cannot fit")
    o.add_argument("--strategy", default="dca")
    args = p.parse_args(argv)
    return {"steps": profile_steps, "memory": profile_memory, "oom": profile_oom}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
