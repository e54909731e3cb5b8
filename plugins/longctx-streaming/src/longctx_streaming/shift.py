"""A text-ordered sink + window cache, for StreamingLLM composed with a strategy that maps positions (DCA).

The ring cache (``cache.py``) keeps keys valid across evictions by exploiting that plain RoPE depends only on
distances, and attends in ring order with its own mask and positions. A composed strategy such as DCA needs what
the ring avoids: keys in text order at cache-local positions ``0..n-1`` and RoPE positions that are its own
function of them (``j mod s``), under which an eviction changes different keys by different angles.

So this layout evicts by shifting the window left by the evicted count ``e`` and re-rotating each kept key from its
old RoPE position to its new one, ``rope(p - e) - rope(p)``, where ``rope`` is whatever the state's
``rope_positions`` is at that moment (identity alone; DCA's ``j mod s`` when composed). It costs a pass over the
window per evicting forward, which is why plain streaming keeps the ring. Sinks never move. Keys are rotated in
float32 (bf16 angles would drift).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch


class ShiftingSinkCache:
    """Sink + window in text order; ``plan(T)`` before each forward, then the model calls ``update`` per layer."""

    def __init__(self, num_layers: int, sink: int, window: int, rotary, device, rope: Callable[[torch.Tensor], torch.Tensor]):
        self.num_layers = num_layers
        self.sink, self.window = sink, window
        self.capacity = sink + window
        self.rotary = rotary  # longctx_llm.hf_adapter.Rotary
        self.rope = rope  # (P,) cache-local positions -> (P,) RoPE positions, looked up when evicting
        self.device = torch.device(device)
        self.keys: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, S+W, D) each
        self.values: list[Optional[torch.Tensor]] = [None] * num_layers
        self.filled = 0  # tokens held after this forward's tokens are written
        self.evicted = 0
        self._shift: Optional[tuple[int, int, torch.Tensor]] = None  # (evict, held before, per-key delta)

    def plan(self, new_tokens: int) -> torch.Tensor:
        """Evict what the new tokens need and return their cache-local positions (T,)."""
        T, S, W = new_tokens, self.sink, self.window
        if not 1 <= T <= W:
            raise ValueError(f"a forward piece must hold 1..{W} tokens (the window), got {T}")
        held = self.filled
        evict = max(0, held + T - self.capacity)
        self._shift = None
        if evict:
            old = torch.arange(S + evict, held, device=self.device)  # (K,) positions of the kept window keys
            delta = self.rope(old - evict) - self.rope(old)  # (K,) per-key rotation to their new positions
            self._shift = (evict, held, delta)
            self.evicted += evict
            held -= evict
        self.filled = held + T
        return torch.arange(held, held + T, device=self.device)  # (T,)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Apply this forward's eviction to the layer, append the new keys/values, return the held ones."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if k is None:
            B, H, _, D = key_states.shape
            k = key_states.new_zeros(B, H, self.capacity, D)  # (B, H, S+W, D)
            v = value_states.new_zeros(B, H, self.capacity, value_states.shape[-1])
            self.keys[layer_idx], self.values[layer_idx] = k, v
        if self._shift is not None:
            evict, held, delta = self._shift
            S = self.sink
            kept_k = k[:, :, S + evict : held].float()  # (B, H, K, D) copy: source and target overlap
            k[:, :, S : held - evict] = self.rotary.rotate(kept_k, delta).to(k.dtype)
            v[:, :, S : held - evict] = v[:, :, S + evict : held].clone()
        T = key_states.shape[2]
        start = self.filled - T
        k[:, :, start : self.filled] = key_states
        v[:, :, start : self.filled] = value_states
        return k[:, :, : self.filled], v[:, :, : self.filled]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.filled

    def __len__(self) -> int:
        return self.num_layers

    # ---- saving --------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(self.num_layers):
            if self.keys[i] is not None:
                out[f"layer{i}.keys"] = self.keys[i][:, :, : self.filled]
                out[f"layer{i}.values"] = self.values[i][:, :, : self.filled]
        return out

    def meta(self) -> dict[str, int]:
        return {"filled": self.filled, "evicted": self.evicted}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, int]) -> None:
        self.filled, self.evicted = int(meta["filled"]), int(meta["evicted"])
        for i in range(self.num_layers):
            k = tensors.get(f"layer{i}.keys")
            if k is None:
                continue
            v = tensors[f"layer{i}.values"]
            B, H, n, D = k.shape
            self.keys[i] = k.new_zeros(B, H, self.capacity, D, device=self.device)  # (B, H, S+W, D)
            self.values[i] = v.new_zeros(B, H, self.capacity, v.shape[-1], device=self.device)
            self.keys[i][:, :, :n] = k.to(self.device)
            self.values[i][:, :, :n] = v.to(self.device)
