"""Partial attentions that also return the log-sum-exp (LSE) of their scores, one function per backend.

DCA (arXiv 2402.17463, §3) splits each query's keys into three disjoint sets attended with three different query
rotations; the parts are merged exactly from their LSEs (:func:`merge`). So every backend here answers one
question: softmax attention of ``q`` over ``k``/``v`` (full, or causal on a square block), with the LSE per query.

Backends (all imports are torch only, so this module runs on a bare GPU machine):

- ``math``: explicit scores in float32 (optionally masked); the small-size reference and the fallback.
- ``cpu_flash``: ``aten._scaled_dot_product_flash_attention_for_cpu`` (tiled; never builds the score matrix).
- ``cuda_flash`` / ``cuda_cudnn`` / ``cuda_efficient``: PyTorch's CUDA kernels called through their aten ops,
  which return the LSE that the public ``scaled_dot_product_attention`` throws away.
- ``flash_attn``: the flash-attn package, when installed (optional extra).

Grouped-query attention: for full (non-causal) parts the G query heads sharing a KV head are folded into the query
length, ``(B, H, T, D) -> (B, Hkv, G*T, D)``, so the (long) keys are never copied; causal parts are square and
short (one DCA chunk): the CUDA kernels that take fewer KV heads natively get them as they are, the others get
repeated keys.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

Attend = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for every model dtype, float64 kept (references in double precision)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _fold_gqa(q: torch.Tensor, hkv: int) -> torch.Tensor:
    B, H, T, D = q.shape
    return q.reshape(B, hkv, (H // hkv) * T, D)  # (B, Hkv, G*T, D)


def _unfold_gqa(o: torch.Tensor, lse: torch.Tensor, H: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    B, D = o.shape[0], o.shape[-1]
    return o.reshape(B, H, T, D), lse.reshape(B, H, T)


def _repeat_kv(k: torch.Tensor, H: int) -> torch.Tensor:
    hkv = k.shape[1]
    return k if hkv == H else k.repeat_interleave(H // hkv, dim=1)  # (B, H, K, D)


def attend_math(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool = False,
    scale: float,
    mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference partial attention. q (B, H, T, D), k/v (B, Hkv, K, D), mask broadcastable to (B, 1|H, T, K).

    Rows whose keys are all masked return o = 0 and lse = -inf (an empty part), so the merge ignores them.
    """
    B, H, T, D = q.shape
    hkv, K = k.shape[1], k.shape[2]
    G = H // hkv
    ct = _compute_dtype(q)
    qg = q.to(ct).reshape(B, hkv, G, T, D)  # (B, Hkv, G, T, D)
    s = torch.matmul(qg, k.to(ct)[:, :, None].transpose(-1, -2)) * scale  # (B, Hkv, G, T, K)
    if causal:
        tri = torch.ones(T, K, dtype=torch.bool, device=q.device).tril(K - T)  # bottom-right aligned
        s = s.masked_fill(~tri, float("-inf"))
    if mask is not None:
        m = mask if mask.dim() == 4 else mask[None]
        m = m.reshape(m.shape[0], -1, 1, T, K) if m.shape[1] == 1 else m.reshape(m.shape[0], hkv, G, T, K)
        s = s.masked_fill(~m, float("-inf"))
    mx = s.amax(-1, keepdim=True)  # (B, Hkv, G, T, 1)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
    p = torch.exp(s - mx)
    denom = p.sum(-1, keepdim=True)  # (B, Hkv, G, T, 1)
    o = torch.matmul(p, v.to(ct)[:, :, None]) / denom.clamp_min(torch.finfo(ct).tiny)
    lse = (mx + denom.log()).squeeze(-1)  # (B, Hkv, G, T), -inf for empty rows
    return o.reshape(B, H, T, D), lse.reshape(B, H, T)


#: (op, device) -> whether the op takes fewer KV heads than query heads (probed once, :func:`_native_gqa`)
_NATIVE_GQA: dict = {}


def _native_gqa(op: Callable, device: torch.device) -> bool:
    """Whether a CUDA op attends grouped-query heads without repeated keys (PyTorch 2.11's cuDNN and flash do).

    Saves the causal parts' ``_repeat_kv`` copy (~4% of DCA's time at 32k tokens on an H200). Probed once per op and
    device on tiny inputs against the repeated keys, since older PyTorch versions may refuse it or get it wrong.
    """
    key = (op, device)
    if key not in _NATIVE_GQA:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, h, 32, 64, generator=gen).to(device, torch.bfloat16) for h in (4, 2, 2))
        try:
            o = op(q, k, v, True, 0.125)[0]
            ref = op(q, _repeat_kv(k, 4), _repeat_kv(v, 4), True, 0.125)[0]
            _NATIVE_GQA[key] = o.shape == ref.shape and bool(torch.allclose(o, ref, atol=1e-2, rtol=1e-2))
        except (RuntimeError, ValueError):  # refused: shapes checked, or no kernel for them
            _NATIVE_GQA[key] = False
    return _NATIVE_GQA[key]


def _attend_aten(op: Callable, q, k, v, *, causal: bool, scale: float):
    B, H, T, D = q.shape
    if causal:
        if k.shape[1] != H and not (q.is_cuda and _native_gqa(op, q.device)):
            k, v = _repeat_kv(k, H), _repeat_kv(v, H)
        o, lse = op(q, k, v, causal, scale)
        return o, lse[..., :T]
    hkv = k.shape[1]
    o, lse = op(_fold_gqa(q, hkv), k, v, False, scale)
    return _unfold_gqa(o, lse[..., : (H // hkv) * T], H, T)


def _cpu_flash(q, k, v, causal, scale):
    o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    return o, lse


def _cuda_flash(q, k, v, causal, scale):
    r = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)
    return r[0], r[1]


def _cuda_cudnn(q, k, v, causal, scale):
    r = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, causal, False, scale=scale)
    lse = r[1]
    return r[0], lse.reshape(lse.shape[0], lse.shape[1], -1)


def _cuda_efficient(q, k, v, causal, scale):
    r = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, causal, scale=scale)
    return r[0], r[1]


def attend_flash_attn(q, k, v, *, causal: bool = False, scale: float):
    """flash-attn (``pip install longctx-dca[flash]``): native GQA, (B, T, H, D) layout, LSE returned."""
    from flash_attn import flash_attn_func

    o, lse, _ = flash_attn_func(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale, causal=causal,
        return_attn_probs=True,
    )
    return o.transpose(1, 2), lse  # (B, H, T, D), (B, H, T)


def _wrap(fn) -> Attend:
    def attend(q, k, v, *, causal: bool = False, scale: float):
        return _attend_aten(fn, q, k, v, causal=causal, scale=scale)

    attend.__name__ = fn.__name__.lstrip("_")
    return attend


BACKENDS: dict[str, Attend] = {
    "math": attend_math,
    "cpu_flash": _wrap(_cpu_flash),
    "cuda_flash": _wrap(_cuda_flash),
    "cuda_cudnn": _wrap(_cuda_cudnn),
    "cuda_efficient": _wrap(_cuda_efficient),
    "flash_attn": attend_flash_attn,
}

#: per device type, fastest first, as measured by benchmarks/dca_kernel.py (see its output in the report).
PREFERENCE: dict[str, tuple[str, ...]] = {
    "cuda": ("cuda_cudnn", "cuda_flash", "flash_attn", "cuda_efficient", "math"),
    "cpu": ("cpu_flash", "math"),
}


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def usable(name: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether backend ``name`` can run on this device and dtype (the fused CUDA kernels need half precision)."""
    if name == "math":
        return True
    if name == "cpu_flash":
        return device.type == "cpu"
    if device.type != "cuda":
        return False
    half = dtype in (torch.float16, torch.bfloat16)
    if name == "flash_attn":
        return half and flash_attn_available()
    if name in ("cuda_flash", "cuda_cudnn"):
        return half
    return name == "cuda_efficient"


#: cuDNN builds an execution plan per new shape, about 9 ms of CPU time each (profiled on an H200, torch 2.11).
#: Prefill repeats few shapes, but every decode step has a new key length, so decode must not use it.
DECODE_AVOID = {"cuda_cudnn"}


def pick(device: torch.device, dtype: torch.dtype, preferred: Optional[str] = None, *, decode: bool = False) -> str:
    """The backend to use: ``preferred`` when it can run here, else the fastest usable one.

    ``decode`` (a handful of queries against a cache that grows each step) skips backends with per-shape set-up cost.
    """
    if preferred is not None and preferred != "auto":
        if preferred not in BACKENDS:
            raise ValueError(f"unknown attention backend {preferred!r} (valid: auto, {', '.join(BACKENDS)})")
        if usable(preferred, device, dtype):
            return preferred
    for name in PREFERENCE.get(device.type, ("math",)):
        if decode and name in DECODE_AVOID:
            continue
        if usable(name, device, dtype):
            return name
    return "math"


def merge(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact merge of attentions over disjoint key sets: o = Σ_p exp(lse_p − lse) o_p, lse = logsumexp_p lse_p.

    parts: [(o (B, H, T, D), lse (B, H, T))]; returns the merged (o, lse) in float32 (float64 for float64 input).
    """
    ct = _compute_dtype(parts[0][0])
    if len(parts) == 1:
        return parts[0][0].to(ct), parts[0][1].to(ct)
    lses = torch.stack([p[1].to(ct) for p in parts])  # (P, B, H, T)
    total = torch.logsumexp(lses, dim=0)  # (B, H, T)
    weights = torch.exp(lses - total)[..., None]  # (P, B, H, T, 1); 0 for empty parts
    out = torch.mul(parts[0][0], weights[0])  # promotes to ct without a converted copy of o
    for (o, _), w in zip(parts[1:], weights[1:]):
        out.addcmul_(o, w)  # in place: one pass per part, no temporaries
    return out, total  # (B, H, T, D), (B, H, T)


def merge_into(out: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """out (any strides, e.g. a row slice of the whole output) <- the merged parts, converted once to out's dtype.

    The PyTorch twin of :func:`longctx_dca.triton_ops.merge_into`.
    """
    return out.copy_(parts[0][0] if len(parts) == 1 else merge(parts)[0])
