"""DCA attention kernel time per layer vs the fastest plain causal attention PyTorch has (SDPA causal).

Llama-3-8B head shapes by default (32 query heads, 8 KV heads, head dim 128, bf16, pretraining length 8192, so
DCA's chunk_size 6144 / local_window 1024). Every DCA variant is first checked against the reference (the blocked
math path, float32 on upcast inputs) on small random inputs; then all variants are timed side by side with CUDA
events (median of --repeats after a warm-up) and reported as a ratio to the fastest SDPA causal backend.

Variants ``dca_<backend>`` run the chunked path as it runs in a model (with Triton on CUDA: fused query rotation
and LSE merge, :mod:`longctx_dca.triton_ops`); ``dca_<backend>_torch`` the same with PyTorch ops instead
(``fused=False``), so the two are compared side by side. ``--profile N`` then profiles one DCA call at length N
(torch.profiler) and prints the 25 kernels with the most CUDA time: where the time above SDPA goes.

Imports only torch and longctx_dca's attention modules (runs on a bare GPU machine):

    PYTHONPATH=plugins/longctx-dca/src python3 benchmarks/dca_kernel.py --out bench-out
    PYTHONPATH=plugins/longctx-dca/src python3 benchmarks/dca_kernel.py --variants cuda_cudnn,cuda_cudnn_torch \
        --no-flex --profile 131072
    python benchmarks/dca_kernel.py --lengths 1024,2048 --device cpu --dtype float32 --pretraining-length 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from longctx_dca import kernels
from longctx_dca.attention import Geometry, dca_blocked, dca_chunked, default_inv_freq, rope_rotate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="32768,65536,131072", help="comma-separated sequence lengths")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--pretraining-length", type=int, default=8192, help="L: chunk_size 3L/4, local_window L/8")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="auto", help="comma-separated DCA variants, or auto (all usable)")
    p.add_argument("--no-flex", action="store_true", help="skip the FlexAttention variant (compiles ~1 min)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile one DCA call at length N (CUDA)")
    p.add_argument("--profile-variants", default=None, help="comma-separated DCA variants to profile (default: first)")
    p.add_argument("--out", default="bench-out")
    return p.parse_args(argv)


def geometry(L: int) -> Geometry:
    chunk, w = 3 * L // 4, L // 8
    return Geometry(chunk_len=chunk - w, local_window=w)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn, device, repeats: int) -> float:
    fn()  # warm-up (kernel selection, compilation)
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def sdpa_variants(device):
    """Plain causal attention: SDPA's own choice and each backend forced (the fastest is the baseline)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def make(backend):
        def run(q, k, v, scale):
            if backend is None:
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=scale, enable_gqa=True
                )
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=scale, enable_gqa=True
                )

        return run

    out = {"sdpa_causal": make(None)}
    if device.type == "cuda":
        out.update(
            sdpa_flash=make(SDPBackend.FLASH_ATTENTION),
            sdpa_cudnn=make(SDPBackend.CUDNN_ATTENTION),
            sdpa_efficient=make(SDPBackend.EFFICIENT_ATTENTION),
        )
    return out


def fused_available(device) -> bool:
    """Whether ``dca_chunked`` takes its Triton path here (CUDA and Triton importable)."""
    if device.type != "cuda":
        return False
    try:
        from longctx_dca import triton_ops  # noqa: F401
    except ImportError:
        return False
    return True


def chunked(backend: str, fused: Optional[bool], inv_freq):
    def run(q, k, v, g, rot, scale):
        return dca_chunked(q, k, v, g, rot, scale=scale, backend=backend, inv_freq=inv_freq, fused=fused)

    return run


def dca_variants(device, dtype, args, inv_freq):
    names = [n for n in kernels.BACKENDS if n != "math" and kernels.usable(n, device, dtype)]
    if fused_available(device):  # each backend also without the Triton kernels, to compare
        names = [x for n in names for x in (n, f"{n}_torch")]
    if args.variants != "auto":
        names = [n for n in args.variants.split(",") if n != "flex"]
    out = {}
    for n in names:
        backend, torch_only = (n[: -len("_torch")], True) if n.endswith("_torch") else (n, False)
        out[f"dca_{n}"] = chunked(backend, False if torch_only else None, inv_freq)
    want_flex = args.variants == "auto" or "flex" in args.variants.split(",")
    if device.type == "cuda" and want_flex and not args.no_flex:
        from longctx_dca.flex import dca_flex

        out["dca_flex"] = lambda q, k, v, g, rot, scale: dca_flex(q, k, v, g, rot, scale=scale)
    return out


def inputs(n, args, device, dtype, seed=0):
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shape_q = (1, args.heads, n, args.head_dim)
    shape_k = (1, args.kv_heads, n, args.head_dim)
    q = torch.randn(shape_q, generator=gen).to(device, dtype)
    k = torch.randn(shape_k, generator=gen).to(device, dtype)
    v = torch.randn(shape_k, generator=gen).to(device, dtype)
    return q, k, v


def check(variants, args, device, dtype, rot):
    """Max abs / relative error of each variant against the float32 reference on small random inputs."""
    g = Geometry(chunk_len=384, local_window=128)  # n = 1500: four chunks, every part non-empty
    n = 1500
    q, k, v = inputs(n, args, device, dtype, seed=1)
    scale = args.head_dim**-0.5
    pos = torch.arange(n, device=device)[None]
    ref = dca_blocked(q.float(), k.float(), v.float(), g, rot, scale=scale, q_pos=pos, k_pos=pos)
    errs = {}
    for name, fn in variants.items():
        out = fn(q, k, v, g, rot, scale).float()
        errs[name] = {
            "max_abs_err": (out - ref).abs().max().item(),
            "rel_err": ((out - ref).norm() / ref.norm()).item(),
            "finite": bool(torch.isfinite(out).all()),
        }
    return errs


def profile(args, device, dtype, g, rot, scale, dca, out: Path):
    """Each of --profile-variants, one call at length --profile under torch.profiler: top 25 kernels, and a trace."""
    q, k, v = inputs(args.profile, args, device, dtype)
    names = args.profile_variants.split(",") if args.profile_variants else [next(iter(dca))]
    for name in names:
        name = name if name.startswith("dca_") else f"dca_{name}"
        profile_one(name, dca[name], q, k, v, args, device, g, rot, scale, out)


def profile_one(name, fn, q, k, v, args, device, g, rot, scale, out: Path):
    from torch.profiler import ProfilerActivity, profile as torch_profile

    fn(q, k, v, g, rot, scale)  # warm-up: kernel selection, cuDNN plans, Triton compilation
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        fn(q, k, v, g, rot, scale)
        sync(device)
    events = prof.key_averages()
    sort = "device_time_total" if device.type == "cuda" else "cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=25)
    except (AttributeError, KeyError, ValueError):  # older torch names it cuda_time_total
        table = events.table(sort_by="cuda_time_total", row_limit=25)
    print(f"\nprofile: {name} at n={args.profile} (one call; sorted by {sort})\n{table}", flush=True)
    (out / f"profile_{name}_{args.profile}.txt").write_text(table)
    prof.export_chrome_trace(str(out / f"profile_{name}_{args.profile}.json"))


def main(argv=None):
    args = parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    g = geometry(args.pretraining_length)
    inv_freq = default_inv_freq(args.head_dim, 500000.0).to(device)
    rot = rope_rotate(inv_freq)
    scale = args.head_dim**-0.5
    plain, dca = sdpa_variants(device), dca_variants(device, dtype, args, inv_freq)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "dtype": args.dtype,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "chunk_size": g.chunk_size,
        "local_window": g.local_window,
        "triton_fused": fused_available(device),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"# {info}", flush=True)
    errs = check(dca, args, device, dtype, rot)
    print("\ncorrectness vs reference (n=1500, chunk_len 384, local_window 128):")
    for name, e in errs.items():
        print(f"  {name:<24} max_abs_err {e['max_abs_err']:.2e}  rel_err {e['rel_err']:.2e}  finite {e['finite']}")
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        q, k, v = inputs(n, args, device, dtype)
        times = {}
        for name, fn in plain.items():
            try:
                times[name] = time_ms(lambda: fn(q, k, v, scale), device, args.repeats)
            except RuntimeError as e:  # a forced backend that cannot run these shapes
                print(f"  {name} at {n}: unavailable ({str(e).splitlines()[0][:80]})", flush=True)
        for name, fn in dca.items():
            try:
                times[name] = time_ms(lambda: fn(q, k, v, g, rot, scale), device, args.repeats)
            except (RuntimeError, torch.OutOfMemoryError) as e:
                print(f"  {name} at {n}: failed ({str(e).splitlines()[0][:80]})", flush=True)
        base_name = min((t, nm) for nm, t in times.items() if nm.startswith("sdpa"))[1]
        base = times[base_name]
        for name, t in times.items():
            rows.append({"length": n, "variant": name, "ms": t, "ratio_to_fastest_sdpa": t / base, "baseline": base_name})
            print(f"  n={n:>7}  {name:<24} {t:9.2f} ms  {t / base:5.2f}x {base_name}", flush=True)
        del q, k, v
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dca_kernel.json").write_text(json.dumps({"info": info, "check": errs, "rows": rows}, indent=2))
    print(f"\n{'length':>8} {'variant':<24} {'ms/layer':>10} {'x fastest SDPA':>15} {'x torch path':>13}")
    by_key = {(r["length"], r["variant"]): r["ms"] for r in rows}
    for r in rows:
        twin = by_key.get((r["length"], r["variant"] + "_torch"))  # the same variant without the Triton kernels
        vs = f"{r['ms'] / twin:>13.2f}" if twin else ""
        print(f"{r['length']:>8} {r['variant']:<24} {r['ms']:>10.2f} {r['ratio_to_fastest_sdpa']:>15.2f} {vs}")
    if args.profile:
        profile(args, device, dtype, g, rot, scale, dca, out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name in dict.fromkeys(r["variant"] for r in rows):
            pts = [(r["length"], r["ms"]) for r in rows if r["variant"] == name]
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel="ms per layer", title=info["device"])
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "dca_kernel.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
