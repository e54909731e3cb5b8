"""Attention over a ring cache where the plain causal path does not apply.

- ``ring_attention``: a multi-token piece streaming into a full cache, its newest tokens written over evicted slots
  (not at the end). A single query into a full cache sees every key, and before the first eviction keys are in text
  order, so both of those take the core's plain path. The mask is (T, S + W): bounded by the cache, never by the text.
- ``valid_attention``: one query per row over the slots that row holds (a mask over the whole buffer): a session's
  one-token step into a filling cache on the graph path, and the rows of a pool, each with its own fill.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ring_mask(write: torch.Tensor, num_keys: int) -> torch.Tensor:
    """(T, K) bool: query i sees every old key and the new keys 0..i (new key j sits at physical ``write[j]``)."""
    T = write.numel()
    mask = torch.ones(T, num_keys, dtype=torch.bool, device=write.device)  # (T, K)
    idx = torch.arange(T, device=write.device)
    mask[:, write] = idx[None, :] <= idx[:, None]  # (T, T) causal among the new tokens
    return mask


def ring_attention(module, query, key, value, ctx, *, scaling, dropout=0.0, **kwargs):
    """SDPA with a ring-aware causal mask; query (B, H, T, D), key/value (B, Hkv, K, D) -> (B, T, H, D)."""
    # the context is shared by every layer of one forward: build the mask once, not once per layer
    mask = ctx.extra.get("_ring_mask")
    if mask is None or mask.shape[-1] != key.shape[2]:
        mask = ring_mask(ctx.extra["streaming_write"], key.shape[2])[None, None]  # (1, 1, T, K)
        ctx.extra["_ring_mask"] = mask
    out = F.scaled_dot_product_attention(
        query, key, value, attn_mask=mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )  # (B, H, T, D); grouped-query heads read their kv head without copying K/V
    return out.transpose(1, 2).contiguous()  # (B, T, H, D)


def valid_attention(module, query, key, value, ctx, *, scaling, dropout=0.0, **kwargs):
    """One query per row over the slots ``ctx.extra["streaming_valid"]`` (B or 1, 1, 1, K) marks; query (B, H, 1, D),
    key/value (B, Hkv, K, D) -> (B, 1, H, D).

    The query heads that share a key/value head (grouped-query attention) are folded into the query length: (B, Hkv,
    H / Hkv, D) against (B, Hkv, K, D), the mask broadcast over them. The same result as SDPA's ``enable_gqa``, but a
    kernel that takes a mask (memory-efficient attention) then runs without copying K/V out to every query head."""
    B, H, _, D = query.shape
    Hkv = key.shape[1]
    out = F.scaled_dot_product_attention(
        query.reshape(B, Hkv, H // Hkv, D), key, value, attn_mask=ctx.extra["streaming_valid"], scale=scaling,
    )  # (B, Hkv, H / Hkv, D): query head h reads key/value head h // (H / Hkv)
    return out.reshape(B, H, 1, D).transpose(1, 2).contiguous()  # (B, 1, H, D)
