"""Sliding-window ("local") attention as a longctx-llm strategy plugin: the smallest useful example."""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import Field

from longctx_llm import KVCacheState, Strategy, StrategyOptions


class LocalOptions(StrategyOptions):
    window: int = Field(256, gt=0, description="Each query sees at most this many most recent tokens (itself included).")


def local_attention(module, query, key, value, ctx, *, scaling, dropout=0.0):
    """Causal attention restricted to the last ``window`` keys (a (T, K) band, built per prefill chunk)."""
    window = ctx.extra["window"]
    T, K = query.shape[2], key.shape[2]
    q_pos = ctx.q_positions  # (B, T)
    k_pos = ctx.key_positions(K)  # (B|1, K)
    dist = q_pos[:, :, None] - k_pos[:, None, :]  # (B, T, K)
    allowed = (dist >= 0) & (dist < window)
    if ctx.key_padding is not None:
        allowed = allowed & ctx.key_padding[:, None, :]
    allowed = allowed | (torch.arange(K, device=query.device)[None, None, :] == (K - T + torch.arange(T, device=query.device))[None, :, None])
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)  # (B, H, K, D)
    value = value.repeat_interleave(groups, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=allowed[:, None], scale=scaling)
    return out.transpose(1, 2).contiguous()  # (B, T, H, D), as transformers' attention functions return


class LocalState(KVCacheState):
    def __init__(self, model, batch_size: int, window: int):
        super().__init__(model, batch_size)
        self.window = window

    def attention(self):
        return local_attention

    def attention_extra(self):
        return {"window": self.window}


class LocalStrategy(Strategy):
    name = "example-local"
    Options = LocalOptions

    def context_window(self, info) -> Optional[int]:
        return info.pretraining_length or None

    def new_state(self, model, batch_size: int = 1) -> LocalState:
        return LocalState(model, batch_size, self.options.window)
