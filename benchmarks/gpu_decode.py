"""Decode at batch 1 against the memory-bandwidth bound: our default path, the eager path, transformers' best.

    python benchmarks/gpu_decode.py --contexts 4096,32768,65536 --layers 32 --out bench-out
    python benchmarks/gpu_decode.py --device cpu --contexts 256 --hidden 256 --heads 4 --kv-heads 2 --layers 2 \
        --intermediate 512 --vocab 49152 --steps 8 --no-hf     # dry run

For each context and strategy (``full``, ``dca``), one run of a random-weight Llama-3-8B-shaped model in bf16:

- ``default``: the strategy with its default options (on CUDA: the preallocated cache, CUDA-graph decode steps and
  the model's RMSNorms fused into one kernel each, :mod:`longctx_llm.kernels.fused_norm`);
- ``unfused``: the same with transformers' own RMSNorm modules put back (the default before the fused norms);
- ``eager``: ``static_cache: false, cuda_graphs: false`` (a ``DynamicCache`` and eager steps, the path before);
- ``compiled`` (``--compile``): ``compile: true``, the graph-replayed step through ``torch.compile``;
- ``hf``: transformers' own ``generate`` on the same weights with ``cache_implementation="static"`` and its
  automatic ``torch.compile`` (what a transformers user gets at best), timed per step from a logits processor.

Steps are timed back to back (``state.forward`` of one token, what the generation loop calls). The bound is the
measured device copy bandwidth over the bytes a step must read: every weight matrix except the input embedding
table (one row of it), plus the keys and values of the context. The logits of ``default`` and ``eager`` are
compared step by step on the same tokens (max |difference| over the vocabulary, bf16), beside the difference between
two equally valid eager runs (the prompt fed in one piece against two): bf16's own noise on this model.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from _common import (
    add_model_shape_args, copy_bandwidth, header, load_tokenizer, out_dir, print_table, random_llama, sync, write_json,
)

from longctx_llm import registry
from longctx_llm.model import hf_adapter


def bytes_per_token(lm, args, context: int) -> int:
    model = lm.model
    emb = model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if model.get_output_embeddings().weight is not emb:  # untied: the table itself is not read, one row is
        weights -= emb.numel() * emb.element_size() - emb.shape[1] * emb.element_size()
    head_dim = args.hidden // args.heads
    kv = args.layers * 2 * args.kv_heads * head_dim * context * emb.element_size()
    return weights + kv


def time_ours(lm, name: str, options: dict, x: torch.Tensor, steps: int, tokens: torch.Tensor, pieces: int = 1):
    """(ms per step, logits of every timed step) for one strategy configuration (the prompt fed in ``pieces``)."""
    device = lm.device
    state = registry.get("strategy", name)(max_length=x.shape[1] + steps + 64, **options).new_state(lm)
    state.reserve(x.shape[1] + steps + 8)
    for piece in x.chunk(pieces, dim=1):
        state.forward(piece)
    for t in tokens[:3]:  # warm-up: the first step runs eagerly, the second captures the graph
        state.forward(t.view(1, 1))
    sync(device)
    outs = []
    t0 = time.perf_counter()
    for t in tokens[3 : 3 + steps]:
        outs.append(state.forward(t.view(1, 1)))
    sync(device)
    ms = (time.perf_counter() - t0) / steps * 1e3
    logits = torch.cat(outs, dim=1)[0].float()  # (steps, V)
    del state
    return ms, logits


class _StepClock:
    """A logits processor that notes the time of every generation step (after synchronising the device)."""

    def __init__(self, device):
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.times.append(time.perf_counter())
        return scores


def time_hf(lm, x: torch.Tensor, steps: int) -> float:
    """ms per decode step of transformers' generate with a static cache (compiled automatically on CUDA)."""
    from transformers import LogitsProcessorList

    model = lm.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        for attempt in range(2):  # the first call compiles; the second is timed
            clock = _StepClock(lm.device)
            with torch.inference_mode():
                model.generate(
                    x.to(lm.device), attention_mask=torch.ones_like(x, device=lm.device), max_new_tokens=steps + 4,
                    min_new_tokens=steps + 4, do_sample=False, cache_implementation="static",
                    logits_processor=LogitsProcessorList([clock]), pad_token_id=0,
                )
        gaps = [b - a for a, b in zip(clock.times[3:], clock.times[4:])]
        return sum(gaps) / len(gaps) * 1e3
    finally:
        model.set_attn_implementation(previous)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--contexts", default="4096,32768,65536")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--strategies", default="full,dca")
    p.add_argument("--no-hf", action="store_true", help="skip transformers' generate (its compile takes minutes)")
    p.add_argument("--compile", action="store_true", help="also measure the strategies with compile: true")
    p.add_argument("--no-unfused", action="store_true", help="skip the default path with transformers' own norms")
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory (default: the embedded model's)")
    add_model_shape_args(p, layers=32)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lm = random_llama(args, load_tokenizer(args.tokenizer), device, dtype)
    bw = copy_bandwidth(device)
    gen = torch.Generator().manual_seed(0)
    results = {"info": header(args.device, layers=args.layers, hidden=args.hidden, copy_bandwidth_gb_s=bw / 1e9),
               "rows": []}
    print(f"copy bandwidth {bw / 1e9:.0f} GB/s; {args.layers}-layer 8B-shaped Llama, {dtype}", flush=True)
    rows = []
    for ctx in [int(c) for c in args.contexts.split(",")]:
        x = torch.randint(10, args.vocab, (1, ctx), generator=gen)
        tokens = torch.randint(10, args.vocab, (args.steps + 3,), generator=gen)
        bound_ms = bytes_per_token(lm, args, ctx) / bw * 1e3
        row = {"context": ctx, "bound_ms": bound_ms}
        for name in args.strategies.split(","):
            fast_ms, fast = time_ours(lm, name, {}, x, args.steps, tokens)
            eager_opts = {"static_cache": False, "cuda_graphs": False}
            eager_ms, eager = time_ours(lm, name, eager_opts, x, args.steps, tokens)
            _, eager2 = time_ours(lm, name, eager_opts, x, args.steps, tokens, pieces=2)
            row[f"{name}_noise_logit_diff"] = (eager2 - eager).abs().max().item()
            if not args.no_unfused and hf_adapter.use_fused_norms(lm.model, enabled=False):
                try:
                    unfused_ms, _ = time_ours(lm, name, {}, x, args.steps, tokens)
                finally:
                    hf_adapter.use_fused_norms(lm.model)
                row[f"{name}_unfused_ms"] = unfused_ms
                row[f"{name}_unfused_of_bound"] = bound_ms / unfused_ms
            row[f"{name}_ms"] = fast_ms
            row[f"{name}_eager_ms"] = eager_ms
            row[f"{name}_of_bound"] = bound_ms / fast_ms
            row[f"{name}_eager_of_bound"] = bound_ms / eager_ms
            if args.compile:
                try:
                    t0 = time.perf_counter()
                    comp_ms, comp = time_ours(lm, name, {"compile": True}, x, args.steps, tokens)
                    row[f"{name}_compiled_ms"] = comp_ms
                    row[f"{name}_compiled_of_bound"] = bound_ms / comp_ms
                    row[f"{name}_compiled_max_logit_diff"] = (comp - eager).abs().max().item()
                    print(f"  {ctx} {name} compiled: {comp_ms:.3f} ms (whole run {time.perf_counter() - t0:.0f} s)",
                          flush=True)
                except Exception as exc:
                    row[f"{name}_compiled_error"] = f"{type(exc).__name__}: {exc}"[:300]
            row[f"{name}_logit_abs_max"] = eager.abs().max().item()
            row[f"{name}_max_logit_diff"] = (fast - eager).abs().max().item()
            row[f"{name}_same_argmax"] = (fast.argmax(-1) == eager.argmax(-1)).float().mean().item()
            print(f"  {ctx} {name}: {fast_ms:.3f} ms (eager {eager_ms:.3f}), bound {bound_ms:.3f} ms", flush=True)
        if "dca_ms" in row and "full_ms" in row:
            row["dca_over_full"] = row["dca_ms"] / row["full_ms"]
        if not args.no_hf:
            try:
                row["hf_static_compile_ms"] = time_hf(lm, x, args.steps)
                row["hf_over_full"] = row["hf_static_compile_ms"] / row["full_ms"]
            except Exception as exc:  # report, do not lose the other rows
                row["hf_error"] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"  {ctx} hf: {row.get('hf_static_compile_ms', row.get('hf_error'))}", flush=True)
        rows.append(row)
        results["rows"] = rows
        write_json(out_dir(args.out), "gpu_decode.json", results)
    print()
    print_table(rows, ["context", "bound_ms", "full_ms", "full_of_bound", "full_unfused_of_bound", "full_eager_of_bound",
                       "dca_ms", "dca_of_bound", "dca_unfused_of_bound", "dca_over_full", "hf_static_compile_ms",
                       "hf_over_full"])
    if args.compile:
        print()
        print_table(rows, ["context", "full_compiled_ms", "full_compiled_of_bound", "dca_compiled_ms",
                           "dca_compiled_of_bound"])
    print()
    print_table(rows, ["context", "full_logit_abs_max", "full_max_logit_diff", "full_noise_logit_diff", "full_same_argmax",
                       "dca_max_logit_diff", "dca_noise_logit_diff", "dca_same_argmax"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
