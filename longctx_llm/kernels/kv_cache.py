"""A preallocated key/value cache that grows in large steps: a decode step writes one slot and copies nothing.

transformers' ``DynamicCache`` concatenates every step, so each decode step copies the whole cache (30% of an 8B
model's GPU time at 64k, profiled: benchmarks/RESULTS.md). Here each layer owns one (B, H_kv, capacity, D) key
buffer and one value buffer; new tokens are written in place at ``[length, length + T)``. The capacity is set by
:meth:`StaticCache.reserve` (a reply's prompt + max_new_tokens, known before prefill) and grows by at least half
of itself when a forward needs more, so a long session re-allocates a logarithmic number of times.

Two ways a forward reads it:

- *sliced* (prefill pieces, CPU decode): ``update`` returns views of the first ``length + T`` entries, so every
  attention function sees exactly what it would see with a ``DynamicCache`` (the same values, the same shapes);
- *fixed* (a decode step, the one that replays from a CUDA graph): the new token is written at the slot held in a
  device tensor, and ``update`` returns the whole buffers; the attention masks keys past the valid length, which is
  also a device tensor (:class:`DecodeView`). Every address and shape is then the same from step to step until the
  cache grows (``generation`` counts growths, so captured graphs know when their buffers are gone).

Like the streaming ring cache, the object duck-types the part of transformers' ``Cache`` the supported models call
when ``position_ids`` are given and the ``longctx`` attention is active (``update``, ``get_seq_length``,
``__len__``); it touches no transformers internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import LongctxError

#: capacities are multiples of this many tokens
GRANULE = 256


def _round_up(n: int, to: int = GRANULE) -> int:
    return -(-n // to) * to


@dataclass
class DecodeView:
    """What the attention needs for a *fixed* decode step (passed in ``AttentionContext.extra["decode"]``).

    valid: (B,) int32, keys ``[first, valid)`` of each row are real (the new token included);
    first: (B,) int32, the first real key of each row (its left padding ends there).
    Both live at fixed addresses and are refilled before each step.
    """

    valid: torch.Tensor
    first: torch.Tensor


class StaticCache:
    """Per-layer preallocated buffers; ``begin(T)`` before each forward, ``commit(T)`` after it."""

    def __init__(self, num_layers: int, batch_size: int, device, *, reserve: int = 0):
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.keys: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, capacity, D) each
        self.values: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, capacity, Dv) each
        self.capacity = _round_up(max(reserve, 1))
        self.length = 0  # entries held
        self.generation = 0  # bumped whenever the buffers are replaced (captured graphs then go stale)
        self._fixed = False  # this forward is a fixed decode step
        self._first_zero = True  # view.first holds zeros
        self._slot = torch.zeros(1, dtype=torch.long, device=self.device)  # where the fixed step writes
        self.view = DecodeView(
            valid=torch.zeros(batch_size, dtype=torch.int32, device=self.device),
            first=torch.zeros(batch_size, dtype=torch.int32, device=self.device),
        )

    # ---- sizing ----------------------------------------------------------------------------------------------
    def reserve(self, tokens: int) -> None:
        """Make room for ``tokens`` entries in all (one allocation now rather than growth steps later)."""
        if tokens > self.capacity:
            self._resize(_round_up(tokens))

    @torch.inference_mode()
    def _resize(self, capacity: int) -> None:
        if self.keys[0] is not None:
            self.generation += 1
        for i in range(self.num_layers):
            for bufs in (self.keys, self.values):
                old = bufs[i]
                if old is None:
                    continue
                new = old.new_zeros(*old.shape[:2], capacity, old.shape[-1])
                new[:, :, : self.length] = old[:, :, : self.length]
                bufs[i] = new
        self.capacity = capacity

    def begin(self, new_tokens: int, *, fixed: bool = False, first: Optional[torch.Tensor] = None) -> None:
        """Prepare a forward of ``new_tokens`` tokens; ``fixed``: a one-token step read through :attr:`view`."""
        need = self.length + new_tokens
        if need > self.capacity:
            self._resize(_round_up(max(need, self.capacity + self.capacity // 2)))
        self._fixed = fixed
        if fixed:
            if new_tokens != 1:
                raise LongctxError(f"a fixed decode step feeds one token per row, got {new_tokens}")
            self._slot.fill_(self.length)
            self.view.valid.fill_(need)
            if first is not None:
                self.view.first.copy_(first)
                self._first_zero = False
            elif not self._first_zero:  # unpadded rows: zero once, not on every step
                self.view.first.zero_()
                self._first_zero = True

    def commit(self, new_tokens: int) -> None:
        self.length += new_tokens
        self._fixed = False

    # ---- the Cache protocol the models call ------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write this forward's keys/values (B, H, T, D) after the held ones; return what attention reads."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if k is None:
            B, H, _, D = key_states.shape
            k = self.keys[layer_idx] = key_states.new_zeros(B, H, self.capacity, D)
            v = self.values[layer_idx] = value_states.new_zeros(B, H, self.capacity, value_states.shape[-1])
        if self._fixed:
            k.index_copy_(2, self._slot, key_states)
            v.index_copy_(2, self._slot, value_states)
            return k, v
        end = self.length + key_states.shape[2]
        k[:, :, self.length : end] = key_states
        v[:, :, self.length : end] = value_states
        return k[:, :, :end], v[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.length

    def __len__(self) -> int:
        return self.num_layers

    # ---- reading and editing (rewind, memories that splice slots, saving) ---------------------------------------
    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) views of the held entries (B, H, length, D)."""
        return [(k[:, :, : self.length], v[:, :, : self.length]) for k, v in zip(self.keys, self.values) if k is not None]

    @torch.inference_mode()
    def set_layer(self, i: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Replace layer i's entries by ``keys``/``values`` (B, H, n, D); the held length becomes n. A memory editing
        the cache (CCM) replaces every layer in turn, to the same n, before the next forward."""
        n = keys.shape[2]
        if n > self.capacity:
            self._resize(_round_up(max(n, self.capacity + self.capacity // 2)))
        if self.keys[i] is None:
            self.keys[i] = keys.new_zeros(*keys.shape[:2], self.capacity, keys.shape[-1])
            self.values[i] = values.new_zeros(*values.shape[:2], self.capacity, values.shape[-1])
        self.keys[i][:, :, :n] = keys
        self.values[i][:, :, :n] = values
        self.length = n

    @torch.inference_mode()
    def append(self, entries: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write (B, H, n, D) keys/values per layer after the held entries, into the same buffers (``generation``
        moves only if they must grow); the held length moves last, so a failed write leaves the cache as it was."""
        n = entries[0][0].shape[2]
        self.reserve(self.length + n)
        for i, (k, v) in enumerate(entries):
            self.keys[i][:, :, self.length : self.length + n] = k
            self.values[i][:, :, self.length : self.length + n] = v
        self.length += n

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if k is not None:
                out[f"layer{i}.keys"] = k[:, :, : self.length]
                out[f"layer{i}.values"] = v[:, :, : self.length]
        return out

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for i in range(self.num_layers):
            k = tensors.get(f"layer{i}.keys")
            if k is not None:
                self.set_layer(i, k.to(self.device), tensors[f"layer{i}.values"].to(self.device))
