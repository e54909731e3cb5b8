"""How StreamingLLM keeps keys at cache-local positions: three ways, timed side by side (issue 4).

Per decode step (one new token, cache full, so one token is evicted) and per streamed piece, for every layer:

- ``rerotate``: keys stored rotated at their slots; on eviction every kept window key is re-rotated by -evicted
  (transformers' old SinkCache);
- ``prerope``: keys stored before RoPE; all sink + window keys rotated to their slots at attention time (the
  paper's reference);
- ``sinkshift`` (what longctx-streaming does): ring keys stay rotated at base + slot, which eviction never
  invalidates; only the S sink keys are rotated by base, plus one amortised rebase of the ring every W evictions.

Each step also runs the attention over the cache, so the ratio is of the whole per-layer cost. All three are checked
to give the same attention output. Shapes default to SmolLM2-135M (9 query heads, 3 KV heads, head dim 64, 30
layers, rope theta 100000).

    python benchmarks/streaming_rotation.py --device cpu --windows 1024,2048
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from _common import header, out_dir, plot, print_table, write_json

from longctx_llm.model import Rotary


def attend(q, k, v):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return F.scaled_dot_product_attention(q, k, v)  # (B, H, T, D); a decode query sees every key


class Scheme:
    """One layer's cache under one scheme; ``step(q_raw, k_raw, v)`` feeds T tokens into a full cache."""

    def __init__(self, kind, rotary, sink, window, k0, v0):
        self.kind, self.rot, self.S, self.W = kind, rotary, sink, window
        n = sink + window
        self.slots = torch.arange(n, device=k0.device)
        self.k_raw = k0.clone()  # (B, Hkv, S+W, D) pre-RoPE keys, slot order = physical order at start
        self.v = v0.clone()
        self.k = rotary.rotate(k0, self.slots)  # (B, Hkv, S+W, D) rotated at slots
        self.sink_keys = self.k[:, :, :sink].clone()
        self.head, self.base = 0, 0
        self.cos, self.sin = rotary.cos_sin(torch.arange(n, device=k0.device), k0.dtype)

    def step(self, q_raw, k_raw, v_new):
        T, S, W = k_raw.shape[2], self.S, self.W
        write = S + (self.head + torch.arange(T, device=k_raw.device)) % W
        self.head = (self.head + T) % W
        q_slot = torch.arange(S + W - T, S + W, device=q_raw.device)
        if self.kind == "prerope":
            self.k_raw.index_copy_(2, write, k_raw)
            self.v.index_copy_(2, write, v_new)
            ring = S + (self.head + torch.arange(W, device=k_raw.device)) % W  # physical index, oldest first
            pos = torch.empty(S + W, dtype=torch.long, device=k_raw.device)
            pos[:S] = torch.arange(S, device=k_raw.device)
            pos[ring] = torch.arange(S, S + W, device=k_raw.device)
            k = self.rot.rotate(self.k_raw, pos)  # every key, every step
            q = self.rot.rotate(q_raw, q_slot)
        elif self.kind == "rerotate":
            self.k[:, :, S:] = self.rot.rotate(self.k[:, :, S:], torch.tensor(-T, device=k_raw.device))
            self.k.index_copy_(2, write, self.rot.rotate(k_raw, q_slot))
            self.v.index_copy_(2, write, v_new)
            k, q = self.k, self.rot.rotate(q_raw, q_slot)
        else:  # sinkshift
            if self.base >= W:
                self.k[:, :, S:] = self.rot.rotate(self.k[:, :, S:], torch.tensor(-self.base, device=k_raw.device))
                self.base = 0
            self.base += T
            self.k.index_copy_(2, write, self.rot.rotate(k_raw, q_slot + self.base))
            self.v.index_copy_(2, write, v_new)
            self.k[:, :, :S] = self.rot.rotate(self.sink_keys, torch.tensor(self.base, device=k_raw.device))
            k, q = self.k, self.rot.rotate(q_raw, q_slot + self.base)
        return attend(q, k, self.v) if T == 1 else None


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--windows", default="1024,2048,4096")
    p.add_argument("--sink", type=int, default=4)
    p.add_argument("--heads", type=int, default=9)
    p.add_argument("--kv-heads", type=int, default=3)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--theta", type=float, default=100000.0)
    p.add_argument("--steps", type=int, default=20, help="decode steps timed per scheme")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    dtype = getattr(torch, args.dtype)
    D = args.head_dim
    inv_freq = 1.0 / (args.theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    rot = Rotary(inv_freq=inv_freq.to(device))
    g = torch.Generator(device="cpu").manual_seed(0)
    rows = []
    for W in [int(x) for x in args.windows.split(",")]:
        n = args.sink + W
        k0 = torch.randn(1, args.kv_heads, n, D, generator=g).to(device, dtype)
        v0 = torch.randn(1, args.kv_heads, n, D, generator=g).to(device, dtype)
        schemes = {kind: [Scheme(kind, rot, args.sink, W, k0, v0) for _ in range(args.layers)]
                   for kind in ("prerope", "rerotate", "sinkshift")}
        steps = [(torch.randn(1, args.heads, 1, D, generator=g).to(device, dtype),
                  torch.randn(1, args.kv_heads, 1, D, generator=g).to(device, dtype),
                  torch.randn(1, args.kv_heads, 1, D, generator=g).to(device, dtype)) for _ in range(args.steps)]
        outs, ms = {}, {}
        for kind, layers in schemes.items():
            for s in steps[:2]:  # warm-up (also advances every scheme identically)
                for lay in layers:
                    lay.step(*s)
            sync(device)
            t0 = time.perf_counter()
            for s in steps[2:]:
                for lay in layers:
                    out = lay.step(*s)
            sync(device)
            ms[kind] = (time.perf_counter() - t0) * 1000 / (len(steps) - 2)
            outs[kind] = out.float()
        diff = max((outs[k] - outs["prerope"]).abs().max().item() for k in outs)
        row = {"window": W, **{f"{k}_ms": v for k, v in ms.items()}, "max_abs_diff": diff}
        row["prerope_over_sinkshift"] = ms["prerope"] / ms["sinkshift"]
        row["rerotate_over_sinkshift"] = ms["rerotate"] / ms["sinkshift"]
        rows.append(row)
    print(f"per decode step, {args.layers} layers, {args.heads}/{args.kv_heads} heads, dim {D}, {device} {args.dtype}")
    print_table(rows, ["window", "prerope_ms", "rerotate_ms", "sinkshift_ms", "prerope_over_sinkshift",
                       "rerotate_over_sinkshift", "max_abs_diff"])
    out = out_dir(args.out)
    write_json(out, "streaming_rotation.json", {**header(device, args=vars(args)), "rows": rows})
    plot(out, "streaming_rotation.png",
         {k: [(r["window"], r[f"{k}_ms"]) for r in rows] for k in ("prerope", "rerotate", "sinkshift")},
         "window (tokens)", "ms per decode step (all layers)", "StreamingLLM key positions: cost per step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
