"""DCA through FlexAttention (CUDA): one call per part over the whole sequence, with a block mask each.

The three DCA key sets (DCA §3) are block-structured in (query, key) space: the intra part is a block-diagonal
causal band, the successive part one block below the diagonal, the inter part the staircase beneath it. A block
mask lets the kernel skip every empty tile and run full tiles without evaluating the mask, so each call does only
its part's work; the parts are then merged by their LSE like the fused-kernel path.

Used only when it measures faster (``benchmarks/dca_kernel.py``); block masks are cached per (length, geometry).
Imports torch only.
"""

from __future__ import annotations

import functools

import torch

from . import kernels
from .attention import Geometry, Rotate, _rot, _scale_rows, query_deltas, temperature


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=16)
def _block_masks(T: int, K: int, s: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    off = K - T  # queries are the last T positions

    def intra(b, h, q, kv):
        return ((q + off) // s == kv // s) & (kv <= q + off)

    def succ(b, h, q, kv):
        return kv // s == (q + off) // s - 1

    def inter(b, h, q, kv):
        return kv // s <= (q + off) // s - 2

    return tuple(create_block_mask(m, None, None, T, K, device=device) for m in (intra, succ, inter))


def _flex(q, k, v, block_mask, scale):
    flex = _compiled_flex()
    try:
        from torch.nn.attention.flex_attention import AuxRequest

        o, aux = flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True, return_aux=AuxRequest(lse=True))
        return o, aux.lse
    except ImportError:  # older torch: return_lse
        return flex(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=True, return_lse=True)


def dca_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Geometry, rotate: Rotate, *, scale: float):
    """Same contract as :func:`longctx_dca.attention.dca_chunked` (no padding); q (B, H, T, D), k/v (B, Hkv, K, D)."""
    T, K = q.shape[2], k.shape[2]
    pos = torch.arange(K - T, K, device=q.device)  # (T,)
    succ_d, inter_d = query_deltas(pos, g)
    qx = _scale_rows(q, temperature(pos, g))  # the successive and inter parts' queries
    if g.temperature_parts == "all":
        q = qx
    masks = _block_masks(T, K, g.chunk_len, str(q.device))
    queries = (q, _rot(rotate, qx, succ_d), _rot(rotate, qx, inter_d))  # each (B, H, T, D)
    parts = [_flex(qp, k, v, m, scale) for qp, m in zip(queries, masks)]
    return kernels.merge(parts)[0].to(q.dtype)
