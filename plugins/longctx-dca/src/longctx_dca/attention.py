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

- :func:`dca_chunked` — rows share one text layout (no padding): per DCA chunk of the queries, a few calls of a
  fused kernel returning the LSE (:mod:`longctx_dca.kernels`). The fast path on GPU and CPU; on CUDA the query
  re-rotation and the merge run as Triton kernels when Triton is installed (:mod:`longctx_dca.triton_ops`).
- :func:`dca_blocked` — any layout (left padding, per-row positions): query blocks, masks from explicit positions,
  each part restricted to the key columns it can touch. Also the reference the fast paths are checked against.

Queries are re-rotated by position *deltas* with a caller-supplied ``rotate(x, delta)`` (the model's RoPE), done in
float32 so bf16 models lose no precision to the extra rotation (the fused kernel does the same from ``inv_freq``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import kernels

logger = logging.getLogger(__name__)

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
    temperature_power: float = 2.0
    temperature_parts: str = "all"  # "all", or "earlier": only the successive and inter parts (keys of earlier chunks)

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
    """Per-query logit factor (0.1·ln(n/L) + 1)^p, n = i + 1 tokens seen (YaRN-style; DCA §3.3 option).

    p = ``g.temperature_power``: 2 scales queries and keys each by 0.1·ln(n/L) + 1 (YaRN, the DCA reference); 1
    scales one side only (the keys, in vLLM's DCA for Qwen2.5-1M).

    Using each query's own n (not the prompt length) keeps prefill and decode identical. None when disabled.
    """
    if not g.temperature_scaling or not g.pretraining_length:
        return None
    n = (q_pos + 1).to(torch.float64)  # (a few values per query: exact, then cast where applied)
    f = (0.1 * torch.log(n / g.pretraining_length) + 1.0) ** g.temperature_power
    return torch.where(n > g.pretraining_length, f, torch.ones_like(f))


def _rot(rotate: Rotate, q: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    return rotate(q.to(ct), delta).to(q.dtype)


def _scale_rows(q: torch.Tensor, factor: Optional[torch.Tensor]) -> torch.Tensor:
    if factor is None:
        return q
    f = factor if factor.dim() == 2 else factor[None]  # (B|1, T)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (q.to(ct) * f[:, None, :, None].to(ct)).to(q.dtype)  # (B, H, T, D)


# ----------------------------------------------------------------------------------------------------------------
# fast path: one text layout for every row
# ----------------------------------------------------------------------------------------------------------------


#: (device, dtype) pairs on which the Triton kernels failed once (then PyTorch ops are used there)
_FUSED_OFF: set = set()


def _fused_ops(q: torch.Tensor, fused: Optional[bool]):
    """:mod:`longctx_dca.triton_ops` when the Triton kernels are to be used, else None.

    fused None: on CUDA tensors when Triton imports; False: never; True: always (an error without Triton; on CPU
    tensors it needs ``TRITON_INTERPRET=1``, which is how the tests run the fused path without a GPU).
    """
    if fused is False or (fused is None and not q.is_cuda) or q.dtype == torch.float64:
        return None
    if not fused and (q.device, q.dtype) in _FUSED_OFF:
        return None
    try:
        from . import triton_ops
    except ImportError:
        if fused:
            raise
        return None
    return triton_ops


def _intra(attend, qi, k, v, cs: int, a: int, b: int, scale: float) -> list:
    """The intra part of query rows [a, b) of the chunk starting at cs: keys [cs, b), causal (bottom-right).

    The fused kernels are top-left causal, so a query range that starts inside the chunk sees keys [cs, a) in full
    and keys [a, b) causally (two parts; a single query needs no mask at all).
    """
    if a == cs:
        return [attend(qi, k[:, :, cs:b], v[:, :, cs:b], causal=True, scale=scale)]
    if b - a == 1:
        return [attend(qi, k[:, :, cs:b], v[:, :, cs:b], causal=False, scale=scale)]
    return [
        attend(qi, k[:, :, cs:a], v[:, :, cs:a], causal=False, scale=scale),
        attend(qi, k[:, :, a:b], v[:, :, a:b], causal=True, scale=scale),
    ]


def dca_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Geometry,
    rotate: Rotate,
    *,
    scale: float,
    backend: str = "auto",
    inv_freq: Optional[torch.Tensor] = None,
    fused: Optional[bool] = None,
) -> torch.Tensor:
    """DCA for queries at positions ``K−T .. K−1`` over keys at ``0 .. K−1`` (no padding; every row alike).

    q (B, H, T, D) rotated at ``i mod s``; k/v (B, Hkv, K, D) with keys rotated at ``j mod s``.
    Returns (B, H, T, D) in q's dtype.

    ``inv_freq`` (R/2,): the frequencies behind ``rotate`` (``hf_adapter.Rotary.inv_freq``); given, the fused path
    re-rotates queries in one Triton kernel instead of calling ``rotate``. ``fused``: see :func:`_fused_ops`.

    Work per query i of chunk c (``i' = i mod s``, chunk start cs = c·s), three attention calls per chunk:

    - *intra*: keys [cs, i], the query as given (one causal call per chunk);
    - *near* (only ``i' < w``, the first w rows of a chunk): successive keys [cs − s, cs) at ``i' + s``, a rotation
      by the constant delta s (``query_deltas``: ``min(s + w − i', s)``);
    - *far*: every key before the near ones, at ``s + w``. For ``i' >= w`` the successive position
      ``min(i' + s, s + w)`` is ``s + w`` too, so those rows reach keys [0, cs); the first w rows reach [0, cs − s).
      Either way the keys are [0, e·s) with ``e = (i − w) // s``: rows [e·s + w, (e + 1)·s + w) — one chunk's worth,
      shifted by w — share one far call with one rotation (the last w rows of it belong to the next chunk).

    Each row group's parts are merged by their LSE straight into its rows of the output.
    """
    attend = kernels.BACKENDS[kernels.pick(q.device, q.dtype, backend, decode=q.shape[2] <= 16)]
    ops = _fused_ops(q, fused)
    if ops is not None:
        try:
            return _chunked(q, k, v, g, rotate, scale, attend, inv_freq, ops)
        except Exception as exc:  # a Triton that cannot build these kernels for this GPU/dtype: PyTorch ops then
            if fused:
                raise
            _FUSED_OFF.add((q.device, q.dtype))
            logger.warning("DCA: Triton kernels failed on %s/%s (%s: %s); using PyTorch ops from now on",
                           q.device, q.dtype, type(exc).__name__, exc)
    return _chunked(q, k, v, g, rotate, scale, attend, inv_freq, None)


def _chunked(q, k, v, g: Geometry, rotate: Rotate, scale: float, attend, inv_freq, ops) -> torch.Tensor:
    """:func:`dca_chunked` with its attention kernel chosen and ``ops`` (Triton kernels) or None (PyTorch ops)."""
    B, H, T, D = q.shape
    K = k.shape[2]
    s, w = g.chunk_len, g.local_window
    start = K - T
    merge_into = ops.merge_into if ops is not None else kernels.merge_into
    if ops is not None and inv_freq is not None:
        far_tab, near_tab = ops.dca_tables(inv_freq, s, w, q.device)  # cached: no set-up kernels per call

        def rot(x: torch.Tensor, a: int, near: bool) -> torch.Tensor:  # x: rows from absolute position a on
            if near:
                return ops.rotate_tables(x, *near_tab)
            j = (a - w) % s  # x's first row within its far block
            return ops.rotate_tables(x, *(t[j : j + x.shape[2]] for t in far_tab))

    else:
        succ_d, inter_d = query_deltas(torch.arange(start, K, device=q.device), g)  # (T,) each

        def rot(x: torch.Tensor, a: int, near: bool) -> torch.Tensor:
            return _rot(rotate, x, (succ_d if near else inter_d)[a - start : a - start + x.shape[2]])

    qx = q  # the queries of the parts over earlier chunks (successive, inter)
    if g.temperature_scaling:
        qx = _scale_rows(q, temperature(torch.arange(start, K, device=q.device), g))  # once, for all rows
        if g.temperature_parts == "all":
            q = qx

    def rows(a: int, b: int, x: torch.Tensor = q) -> torch.Tensor:  # queries at absolute positions [a, b)
        return x[:, :, a - start : b - start]

    def full(a: int, b: int, k0: int, k1: int, near: bool) -> tuple:  # rows [a, b) rotated, against keys [k0, k1)
        o, lse = attend(rot(rows(a, b, qx), a, near), k[:, :, k0:k1], v[:, :, k0:k1], causal=False, scale=scale)
        return o, lse, a

    def far(e: int) -> Optional[tuple]:  # the far call of rows [e·s + w, (e + 1)·s + w): keys [0, e·s)
        a, b = max(start, e * s + w), min(K, (e + 1) * s + w)
        return full(a, b, 0, e * s, near=False) if e >= 1 and a < b else None

    def take(part: tuple, a: int, b: int) -> tuple:  # rows [a, b) of a part computed for rows from part[2] on
        o, lse, r0 = part
        return o[:, :, a - r0 : b - r0], lse[:, :, a - r0 : b - r0]

    out = torch.empty_like(q)  # (B, H, T, D)
    # a chunk's merges are launched after the next chunk's attention calls: the GPU is then busy with those while the
    # CPU launches the merges (otherwise the first, small chunks of an isolated call leave the GPU waiting on launches)
    pending: list = []
    c0, c1 = start // s, (K - 1) // s
    prev = far(c0 - 1)  # holds the far part of the first w rows of chunk c
    for c in range(c0, c1 + 1):
        cs = c * s
        a, b = max(start, cs), min(K, cs + s)  # absolute query range in chunk c
        m = max(a, min(b, cs + w))  # rows [a, m): i' < w; rows [m, b): i' >= w
        intra = [(o, lse, a) for o, lse in _intra(attend, rows(a, b), k, v, cs, a, b, scale)]
        cur = far(c)
        merges = []
        if c == 0:  # no keys before the chunk: the intra part is all
            merges.append((a, b, [take(p, a, b) for p in intra]))
        else:
            if a < m:
                succ = full(a, m, cs - s, cs, near=True)
                merges.append((a, m, [take(p, a, m) for p in [*intra, succ, prev] if p is not None]))
            if m < b:
                merges.append((m, b, [take(p, m, b) for p in [*intra, cur]]))
        for lo, hi, parts in pending:
            merge_into(out[:, :, lo - start : hi - start], parts)
        pending, prev = merges, cur
    for lo, hi, parts in pending:
        merge_into(out[:, :, lo - start : hi - start], parts)
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
    q_far = _scale_rows(q, temperature(q_pos, g))  # the successive and inter parts' queries
    q_all = q_far if g.temperature_parts == "all" else q
    tb = max(1, min(T, block_elements // max(1, B * H * K)))
    out = torch.empty_like(q)
    for t0 in range(0, T, tb):
        t1 = min(T, t0 + tb)
        q_idx = torch.arange(K - T + t0, K - T + t1, device=q.device)  # (t,)
        masks = part_masks(q_pos[:, t0:t1], k_pos, q_idx, key_padding, g)
        qb, qf = q_all[:, :, t0:t1], q_far[:, :, t0:t1]  # (B, H, t, D)
        queries = (qb, lambda: _rot(rotate, qf, succ_d[:, t0:t1]), lambda: _rot(rotate, qf, inter_d[:, t0:t1]))
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
    inv_freq: Optional[torch.Tensor] = None,
    fused: Optional[bool] = None,
) -> torch.Tensor:
    """DCA over the last T cache entries: the fast chunked path without padding, the blocked path with it.

    Without ``key_padding`` the positions are the cache indices (that is how :class:`KVCacheState` lays out a
    cache whose rows never padded), so q_pos/k_pos are not needed. ``backend="math"`` forces the blocked path.
    ``inv_freq`` / ``fused``: the chunked path's Triton kernels (:func:`dca_chunked`).
    """
    if key_padding is None and backend != "math":
        return dca_chunked(q, k, v, g, rotate, scale=scale, backend=backend, inv_freq=inv_freq, fused=fused)
    K, T = k.shape[2], q.shape[2]
    if k_pos is None:
        k_pos = torch.arange(K, device=q.device)[None].expand(q.shape[0], K)
    if q_pos is None:
        q_pos = k_pos[:, K - T :]
    return dca_blocked(q, k, v, g, rotate, scale=scale, q_pos=q_pos, k_pos=k_pos, key_padding=key_padding)


def dca_decode(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Geometry,
    rotary,
    *,
    view,
    scale: float,
    step: Optional[dict] = None,
    triton: Optional[bool] = None,
) -> torch.Tensor:
    """DCA for one new query per row over a preallocated cache, as one pass over the keys.

    q (B, H, 1, D) rotated at ``i mod s``; k/v (B, Hkv, N, D): a :class:`~longctx_llm.kernels.kv_cache.StaticCache`'s
    buffers, of which keys ``[view.first, view.valid)`` are real (``view``: its
    :class:`~longctx_llm.kernels.kv_cache.DecodeView`; the new token is the last one); ``rotary``: the model's
    :class:`~longctx_llm.model.hf_adapter.Rotary`. Returns (B, H, 1, D).

    The query's three versions (intra as given, successive and inter re-rotated by :func:`query_deltas`, scaled by
    the optional temperature) go to :func:`longctx_llm.kernels.decode_attention.attend` as a rotation, with the bounds
    of the current chunk (intra keys from its start cs, successive keys from cs − s): each key is read once, scored by the
    version its part uses, and one softmax over all of them is exactly the LSE merge of the three partial
    attentions. Everything is computed on the device from ``view``, so the step replays from a CUDA graph; what is
    the same for every layer (angles, bounds) is computed once per step and kept in ``step`` (a per-forward dict).
    """
    from longctx_llm.kernels import attend

    made = step.get("dca") if step is not None else None
    if made is None:
        made = decode_plan(g, rotary, view)
        if step is not None:
            step["dca"] = made
    rotation, bounds = made
    return attend(q.transpose(1, 2), k, v, valid=view.valid, first=view.first, bounds=bounds, scale=scale,
                  rotation=rotation, triton=triton)


def decode_plan(g: Geometry, rotary, view):
    """(rotation, bounds) of a decode step (see :func:`dca_decode`): cos/sin (B, 3, R/2) of the versions' rotation
    deltas (0, successive, inter), their temperature factors (B, 3) or None, and the part bounds (B, 2)."""
    s = g.chunk_len
    first = view.first.long()
    i = view.valid.long() - 1 - first  # (B,) logical position of the new token
    succ_d, inter_d = query_deltas(i, g)  # (B,) each
    deltas = torch.stack([torch.zeros_like(i), succ_d, inter_d], dim=1)  # (B, 3)
    cos, sin = rotary.cos_sin(deltas, torch.float32)  # (B, 3, R): the two halves repeat
    half = cos.shape[-1] // 2
    factor = temperature(i, g)  # (B,) float64 or None
    if factor is not None:
        one = torch.ones_like(factor)
        factor = torch.stack([factor if g.temperature_parts == "all" else one, factor, factor], dim=1).float()
    cs = i - i % s  # start of the new token's chunk
    bounds = torch.stack([cs + first, (cs - s).clamp_min(0) + first], dim=-1).to(torch.int32)  # (B, 2) cache indices
    return (cos[..., :half].contiguous(), sin[..., :half].contiguous(), factor), bounds


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
    "dca_decode",
    "default_inv_freq",
    "part_masks",
    "query_deltas",
    "rope_rotate",
    "temperature",
]
