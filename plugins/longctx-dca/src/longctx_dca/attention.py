"""Dual Chunk Attention: the pure math (arXiv 2402.17463, §3; ``REFERENCE.md`` §1).

Geometry: chunk_len ``s = chunk_size − local_window``; keys are rotated at ``j mod s`` (done by the model, through
the position ids); a query at logical position i (``i' = i mod s``) attends

- intra-chunk keys (same chunk, causal) rotated at ``i'`` — how it arrives from the model;
- successive-chunk keys (previous chunk) rotated at ``min(i' + s, s + w)``;
- inter-chunk keys (every chunk before that) rotated at ``s + w = chunk_size``.

So every relative distance stays below ``chunk_size`` (< the pretraining length), and the local window keeps exact
distances for the ``w`` keys nearest a chunk boundary. The three softmax attentions cover disjoint key sets and are
merged exactly by their log-sum-exp (:func:`longctx_dca.kernels.merge`).

Two paths, both O(n) in memory (no n x n matrix is ever built):

- :func:`dca_chunked` — rows share one text layout (no padding): per DCA chunk of the queries, three (or four)
  calls of a fused kernel returning the LSE (:mod:`longctx_dca.kernels`). The fast path on GPU and CPU.
- :func:`dca_blocked` — any layout (left padding, per-row positions): query blocks, masks from explicit positions,
  each part restricted to the key columns it can touch. Also the reference the fast paths are checked against.

Queries are re-rotated by position *deltas* with a caller-supplied ``rotate(x, delta)`` (the model's RoPE), done in
float32 so bf16 models lose no precision to the extra rotation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import kernels

Rotate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: score-matrix elements per query block in the blocked path (float32: 4 bytes each)
BLOCK_ELEMENTS = 1 << 25


@dataclass(frozen=True)
class Geometry:
    """DCA sizes in tokens: ``chunk_len`` s, ``local_window`` w (chunk_size = s + w < pretraining length)."""

    chunk_len: int
    local_window: int
    pretraining_length: Optional[int] = None  # for the optional temperature
    temperature_scaling: bool = False

    @property
    def chunk_size(self) -> int:
        return self.chunk_len + self.local_window


def query_deltas(q_pos: torch.Tensor, g: Geometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation deltas from the intra position ``i'`` to the successive and inter positions (same shape as q_pos)."""
    s, w = g.chunk_len, g.local_window
    ip = q_pos % s
    succ = torch.clamp(s + w - ip, max=s)  # min(i' + s, s + w) − i'
    inter = s + w - ip  # chunk_size − i'
    return succ, inter


def temperature(q_pos: torch.Tensor, g: Geometry) -> Optional[torch.Tensor]:
    """Per-query logit factor (0.1·ln(n/L) + 1)², n = i + 1 tokens seen (YaRN-style; DCA §3.3 option).

    Using each query's own n (not the prompt length) keeps prefill and decode identical. None when disabled.
    """
    if not g.temperature_scaling or not g.pretraining_length:
        return None
    n = (q_pos + 1).to(torch.float32)
    f = (0.1 * torch.log(n / g.pretraining_length) + 1.0) ** 2
    return torch.where(n > g.pretraining_length, f, torch.ones_like(f))


def _rot(rotate: Rotate, q: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    return rotate(q.to(ct), delta).to(q.dtype)


def _scale_rows(q: torch.Tensor, factor: Optional[torch.Tensor]) -> torch.Tensor:
    if factor is None:
        return q
    f = factor if factor.dim() == 2 else factor[None]  # (B|1, T)
    return (q.float() * f[:, None, :, None]).to(q.dtype)  # (B, H, T, D)


# ----------------------------------------------------------------------------------------------------------------
# fast path: one text layout for every row
# ----------------------------------------------------------------------------------------------------------------


def dca_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Geometry,
    rotate: Rotate,
    *,
    scale: float,
    backend: str = "auto",
) -> torch.Tensor:
    """DCA for queries at positions ``K−T .. K−1`` over keys at ``0 .. K−1`` (no padding; every row alike).

    q (B, H, T, D) rotated at ``i mod s``; k/v (B, Hkv, K, D) with keys rotated at ``j mod s``.
    Returns (B, H, T, D) in q's dtype.
    """
    B, H, T, D = q.shape
    K = k.shape[2]
    s = g.chunk_len
    start = K - T
    name = kernels.pick(q.device, q.dtype, backend, decode=T <= 16)
    attend = kernels.BACKENDS[name]
    pos = torch.arange(start, K, device=q.device)  # (T,)
    succ_d, inter_d = query_deltas(pos, g)
    factor = temperature(pos, g)
    out = torch.empty_like(q)  # (B, H, T, D)
    for c in range(start // s, (K - 1) // s + 1):
        a, b = max(start, c * s), min(K, (c + 1) * s)  # absolute query range in chunk c
        sl = slice(a - start, b - start)
        qi = _scale_rows(q[:, :, sl], None if factor is None else factor[sl])  # (B, H, t, D)
        cs = c * s
        parts = []
        # intra: keys [cs, b), causal (bottom-right); the fused kernels are top-left causal, so a query range that
        # starts inside the chunk sees keys [cs, a) in full and keys [a, b) causally
        if a == cs:
            parts.append(attend(qi, k[:, :, cs:b], v[:, :, cs:b], causal=True, scale=scale))
        elif b - a == 1:
            parts.append(attend(qi, k[:, :, cs:b], v[:, :, cs:b], causal=False, scale=scale))
        else:
            parts.append(attend(qi, k[:, :, cs:a], v[:, :, cs:a], causal=False, scale=scale))
            parts.append(attend(qi, k[:, :, a:b], v[:, :, a:b], causal=True, scale=scale))
        if c >= 1:
            # one rotation serves both parts: min(i' + s, s + w) = s + w for i' >= w, so the successive query only
            # differs from the inter query on the first w rows of a chunk (saves a full pass over q per chunk)
            qn = _rot(rotate, qi, inter_d[sl])  # (B, H, t, D) at chunk_size
            head = max(0, min(b, cs + g.local_window) - a)  # rows with i' < w
            qs = qn
            if head:
                qs = torch.cat([_rot(rotate, qi[:, :, :head], succ_d[sl][:head]), qn[:, :, head:]], dim=2)
            # successive: the whole previous chunk
            parts.append(attend(qs, k[:, :, cs - s : cs], v[:, :, cs - s : cs], causal=False, scale=scale))
            if c >= 2:  # inter: every chunk before the previous one
                parts.append(attend(qn, k[:, :, : cs - s], v[:, :, : cs - s], causal=False, scale=scale))
        o, _ = kernels.merge(parts)
        out[:, :, sl] = o.to(q.dtype)
    return out


# ----------------------------------------------------------------------------------------------------------------
# general path: per-row positions and padding
# ----------------------------------------------------------------------------------------------------------------


def part_masks(
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    q_idx: torch.Tensor,
    key_padding: Optional[torch.Tensor],
    g: Geometry,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(intra, successive, inter) bool masks (B, T, K) from explicit positions.

    q_pos (B, T) / k_pos (B, K): logical positions; q_idx (T,): the queries' cache indices (causality is by cache
    index); key_padding (B, K) True = real token. A query always sees itself (padding rows stay finite).
    """
    K = k_pos.shape[-1]
    k_idx = torch.arange(K, device=k_pos.device)
    causal = k_idx[None, :] <= q_idx[:, None]  # (T, K)
    valid = causal[None] if key_padding is None else causal[None] & key_padding[:, None, :]  # (B|1, T, K)
    cq = (q_pos // g.chunk_len)[:, :, None]  # (B, T, 1)
    ck = (k_pos // g.chunk_len)[:, None, :]  # (B, 1, K)
    diag = (k_idx[None, :] == q_idx[:, None])[None]  # (1, T, K)
    intra = (valid & (ck == cq)) | diag
    succ = valid & (ck == cq - 1) & ~diag
    inter = valid & (ck <= cq - 2) & ~diag
    return intra, succ, inter


def _col_range(mask: torch.Tensor) -> Optional[tuple[int, int]]:
    cols = mask.any(dim=(0, 1)).nonzero()
    if cols.numel() == 0:
        return None
    return int(cols[0]), int(cols[-1]) + 1


def dca_blocked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Geometry,
    rotate: Rotate,
    *,
    scale: float,
    q_pos: torch.Tensor,
    k_pos: torch.Tensor,
    key_padding: Optional[torch.Tensor] = None,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """DCA for any layout: q (B, H, T, D) are the last T cache entries; positions/padding explicit.

    q_pos (B, T), k_pos (B, K), key_padding (B, K) or None. Works in query blocks so the score buffer stays under
    ``block_elements``; each part only touches the key columns its mask can reach.
    """
    B, H, T, D = q.shape
    K = k.shape[2]
    succ_d, inter_d = query_deltas(q_pos, g)  # (B, T)
    factor = temperature(q_pos, g)
    q_all = _scale_rows(q, factor)
    tb = max(1, min(T, block_elements // max(1, B * H * K)))
    out = torch.empty_like(q)
    for t0 in range(0, T, tb):
        t1 = min(T, t0 + tb)
        q_idx = torch.arange(K - T + t0, K - T + t1, device=q.device)  # (t,)
        masks = part_masks(q_pos[:, t0:t1], k_pos, q_idx, key_padding, g)
        qb = q_all[:, :, t0:t1]  # (B, H, t, D)
        queries = (qb, lambda: _rot(rotate, qb, succ_d[:, t0:t1]), lambda: _rot(rotate, qb, inter_d[:, t0:t1]))
        parts = []
        for i, mask in enumerate(masks):
            rng = _col_range(mask)
            if rng is None:
                continue
            lo, hi = rng
            qp = queries[i] if i == 0 else queries[i]()
            parts.append(
                kernels.attend_math(qp, k[:, :, lo:hi], v[:, :, lo:hi], scale=scale, mask=mask[:, None, :, lo:hi])
            )
        o, _ = kernels.merge(parts)
        out[:, :, t0:t1] = o.to(q.dtype)
    return out


def dca_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Geometry,
    rotate: Rotate,
    *,
    scale: float,
    q_pos: Optional[torch.Tensor] = None,
    k_pos: Optional[torch.Tensor] = None,
    key_padding: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """DCA over the last T cache entries: the fast chunked path without padding, the blocked path with it.

    Without ``key_padding`` the positions are the cache indices (that is how :class:`KVCacheState` lays out a
    cache whose rows never padded), so q_pos/k_pos are not needed. ``backend="math"`` forces the blocked path.
    """
    if key_padding is None and backend != "math":
        return dca_chunked(q, k, v, g, rotate, scale=scale, backend=backend)
    K, T = k.shape[2], q.shape[2]
    if k_pos is None:
        k_pos = torch.arange(K, device=q.device)[None].expand(q.shape[0], K)
    if q_pos is None:
        q_pos = k_pos[:, K - T :]
    return dca_blocked(q, k, v, g, rotate, scale=scale, q_pos=q_pos, k_pos=k_pos, key_padding=key_padding)


def rope_rotate(inv_freq: torch.Tensor) -> Rotate:
    """A rotate-half RoPE ``rotate(x, delta)`` from ``inv_freq`` alone (benchmarks and tests without a model)."""

    def rotate(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        freqs = delta.to(ct)[..., None] * inv_freq.to(x.device, ct)  # (..., T, R/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        if cos.dim() == 2:
            cos, sin = cos[None, None], sin[None, None]  # (1, 1, T, R)
        else:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, R)
        r = cos.shape[-1]
        xr, xp = x[..., :r], x[..., r:]
        half = r // 2
        out = xr * cos + torch.cat((-xr[..., half:], xr[..., :half]), dim=-1) * sin
        return torch.cat((out, xp), dim=-1) if xp.shape[-1] else out

    return rotate


def default_inv_freq(head_dim: int, base: float = 10000.0) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))


__all__ = [
    "Geometry",
    "dca_attention",
    "dca_blocked",
    "dca_chunked",
    "default_inv_freq",
    "part_masks",
    "query_deltas",
    "rope_rotate",
    "temperature",
]
