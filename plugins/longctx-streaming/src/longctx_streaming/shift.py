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

from .buffers import SinkBuffers


class ShiftingSinkCache(SinkBuffers):
    """Sink + window in text order; ``plan(T)`` before each forward, then the model calls ``update`` per layer."""

    def __init__(self, num_layers: int, sink: int, window: int, rotary, device, rope: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(num_layers, sink, window, rotary, device)
        self.rope = rope  # (P,) cache-local positions -> (P,) RoPE positions, looked up when evicting
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

    def compact_tail(self, drop: int, keep: int) -> None:
        """Of the newest ``drop + keep`` held tokens remove the first ``drop``; the newest ``keep`` move back by
        ``drop`` positions, re-rotated by ``rope(p - drop) - rope(p)`` (a memory replacing a turn by slots)."""
        n = self.filled
        old = torch.arange(n - keep, n, device=self.device)
        delta = self.rope(old - drop) - self.rope(old)  # (keep,)
        for i in range(self.num_layers):
            k, v = self.keys[i], self.values[i]
            if k is None:
                continue
            k[:, :, n - keep - drop : n - drop] = self._rotate(k[:, :, n - keep : n], delta)  # a copy: may overlap
            v[:, :, n - keep - drop : n - drop] = v[:, :, n - keep : n].clone()
        self.filled = n - drop
        self._shift = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Apply this forward's eviction to the layer, append the new keys/values, return the held ones."""
        k, v = self._buffers(layer_idx, key_states, value_states)
        if self._shift is not None:
            evict, held, delta = self._shift
            S = self.sink
            k[:, :, S : held - evict] = self._rotate(k[:, :, S + evict : held], delta)  # a copy: ranges overlap
            v[:, :, S : held - evict] = v[:, :, S + evict : held].clone()
        T = key_states.shape[2]
        start = self.filled - T
        k[:, :, start : self.filled] = key_states
        v[:, :, start : self.filled] = value_states
        return k[:, :, : self.filled], v[:, :, : self.filled]
