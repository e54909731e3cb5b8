"""The sink + recent-window KV cache of StreamingLLM (arXiv 2309.17453 §3.2), preallocated and updated in place.

Layout per layer: one buffer (B, H_kv, S + W, D) for keys and one for values. Slots ``[0, S)`` hold the first S
tokens ever fed (the attention sinks); slots ``[S, S + W)`` are a ring of the most recent tokens. Nothing is ever
copied to evict: the new tokens are written over the oldest ring entries.

Positions are assigned inside the cache (§3.2): the cache is attended as if its tokens sat at 0..n-1, and a new
token sits at the next cache slot. With RoPE only the *distance* between a query and a key matters, so:

- ring keys are stored rotated at ``base + slot``, where ``base`` is the number of evicted tokens. As tokens are
  evicted, a kept token's slot drops by exactly what ``base`` gains, so its rotation stays valid: kept ring keys
  never need re-rotating;
- the sink keys are the only keys whose cache-local distance to the rest changes on eviction; they are kept as
  first rotated (at 0..S-1) and rotated by ``base`` once per forward (S keys per layer);
- the query is rotated at ``base + slot`` (the strategy's ``rope_positions``);
- every ``rebase_every`` evicted tokens the ring is rotated back by ``-base`` once and ``base`` returns to 0, so
  RoPE angles stay as small as the model was trained with (float32 angles at position 1e6 would be off by ~0.06 rad).

Why this and not the two textbook ways (measured by benchmarks/streaming_rotation.py on CPU, SmolLM2 shapes):
re-rotating all kept keys on every eviction and storing pre-RoPE keys rotated at attention time both touch the whole
window on every decode step (several extra passes over K per layer); shifting the sinks touches S keys, and the
amortised rebase touches one key per evicted token. See the README for the numbers.

The object duck-types the part of transformers' ``Cache`` that Llama, Qwen2/3, Mistral and GPT-NeoX call when
``position_ids`` are given and the ``longctx`` attention is active (``update(k, v, layer_idx, ...)``; masks are never
built for it, so ``get_mask_sizes`` is never asked), in transformers 5.17 through 5.23. It does not subclass
``Cache``, so no transformers internals are touched here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .buffers import SinkBuffers


def sink_pair(rotary, sink_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sink keys, their rotate-half) in float32, (B, H, S, D) each: RoPE by ``base`` is then ``k·cos + half·sin``."""
    sk = sink_keys.float()
    r = rotary.rotary_dim
    half = torch.zeros_like(sk)  # zero past the rotary dims: those pass through (cos 1, sin 0)
    half[..., :r] = rotary.rotate_half(sk[..., :r])
    return sk, half


def base_angles(rotary, bases: torch.Tensor, dim: int) -> torch.Tensor:
    """(2, N, dim) float32: cos and sin of each of ``bases`` (N,) · inv_freq, 1 and 0 past the rotary dims."""
    r = rotary.rotary_dim
    cs = torch.zeros(2, bases.shape[0], dim, dtype=torch.float32, device=bases.device)
    cs[0, :, r:] = 1.0
    cos, sin = rotary.cos_sin(bases, torch.float32)  # (N, r) each
    cs[0, :, :r] = cos
    cs[1, :, :r] = sin
    return cs


@dataclass
class Plan:
    """Where one forward's T new tokens go (computed once, applied by every layer's ``update``)."""

    write: torch.Tensor  # (T,) physical slot of each new token
    length: int  # keys returned to attention (physical prefix [0, length))
    ordered: bool  # the new tokens are the last T of the returned keys, in order (plain causal attention works)
    slots: torch.Tensor  # (T,) cache-local position of each new token
    fills_sinks: bool  # some new tokens land in the sink slots
    #: (1, 1, 1, S + W) which slots the new token sees, for a one-token step into a filling cache that attends the
    #: whole buffer (``fixed_fill``); None: the returned keys are exactly the ones to attend
    valid: Optional[torch.Tensor] = None


class SinkWindowCache(SinkBuffers):
    """Sink + ring-window cache; ``plan(T)`` before each forward, then the model calls ``update`` per layer."""

    def __init__(self, num_layers: int, sink: int, window: int, rotary, device, rebase_every: Optional[int] = None):
        super().__init__(num_layers, sink, window, rotary, device)
        self.rebase_every = rebase_every or window
        self.sink_keys: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, S, D) rotated at 0..S-1
        self.head = 0  # ring index of the oldest window token
        self.base = 0  # RoPE offset: slot s is rotated at base + s
        self._plan: Optional[Plan] = None
        # Tensors a forward reads besides the cache, kept at fixed addresses and refilled in place, so that a full
        # cache's forward is the same GPU program every time and can replay from a CUDA graph (cuda_graphs.py):
        self._base_t = torch.zeros((), dtype=torch.long, device=self.device)  # base, for the sink rotation
        self._write: dict[int, torch.Tensor] = {}  # piece length -> (T,) physical slots of the new tokens
        self._ring_index = torch.arange(window, device=self.device)  # (W,)
        # the sink rotation, split so that each layer pays three kernels (not a full RoPE): per layer the sink keys
        # and their rotate-half in float32, computed once; per forward one (2, D) cos/sin row for ``base``
        self._sink_pairs: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * num_layers
        self._sink_cs: Optional[torch.Tensor] = None  # (2, D): cos, sin of base·inv_freq (1, 0 past the rotary dims)
        #: one-token steps into a cache that is not full yet attend the whole buffer, the unfilled slots masked, so
        #: that they too are one GPU program (a replayed graph) instead of a key length that grows every step
        self.fixed_fill = False
        self._slot_index = torch.arange(self.capacity, device=self.device)  # (S + W,)
        self._valid = torch.zeros(1, 1, 1, self.capacity, dtype=torch.bool, device=self.device)

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    def plan(self, new_tokens: int) -> Plan:
        """Make room for ``new_tokens`` (evicting the oldest window tokens) and say where they go."""
        T, S, W = new_tokens, self.sink, self.window
        if not 1 <= T <= W:
            raise ValueError(f"a forward piece must hold 1..{W} tokens (the window), got {T}")
        if self.base >= self.rebase_every:
            self._rebase()
        n = self.filled
        dev = self.device
        if T == 1 and self.fixed_fill and S <= n < self.capacity and not self.base:
            write = self._fixed_write(1)
            write.fill_(n)
            torch.le(self._slot_index, n, out=self._valid[0, 0, 0])  # slots 0..n: the held tokens and the new one
            plan = Plan(write, self.capacity, False, write, False, valid=self._valid)
            self.filled = n + 1
        elif n + T <= self.capacity:  # nothing evicted yet: physical order is text order
            write = torch.arange(n, n + T, device=dev)
            plan = Plan(write, n + T, True, write, n < S)
            self.filled = n + T
        else:
            evict = n + T - self.capacity
            count = n - S  # window tokens held
            free = (self.head + count) % W  # ring index after the newest token
            write = self._fixed_write(T)
            torch.add(self._ring_index[:T], free, out=write).remainder_(W).add_(S)  # S + (free + i) mod W
            keep = self.capacity - T
            slots = torch.arange(keep, keep + T, device=dev)
            self.head = (self.head + evict) % W
            self.base += evict
            self.evicted += evict
            self.filled = self.capacity
            self._base_t.fill_(self.base)  # once per forward, not per layer
            self._update_sink_angles()
            plan = Plan(write, self.capacity, False, slots, False)
        self._plan = plan
        return plan

    def _fixed_write(self, T: int) -> torch.Tensor:
        """The (T,) buffer of a piece length's physical slots, at one address for the cache's life (graphs read it)."""
        write = self._write.get(T)
        if write is None:
            write = self._write[T] = torch.empty(T, dtype=torch.long, device=self.device)
        return write

    def slot_order(self) -> torch.Tensor:
        """(filled,) physical index of each cache slot in cache-local (text) order: sinks, then oldest to newest."""
        n, S, W = self.filled, self.sink, self.window
        if n < self.capacity or self.head == 0:
            return torch.arange(n, device=self.device)
        ring = S + (self.head + torch.arange(W, device=self.device)) % W
        return torch.cat([torch.arange(S, device=self.device), ring])

    def _rebase(self) -> None:
        """Rotate every ring key back by ``base`` so RoPE positions restart at the cache slots (amortised)."""
        S = self.sink
        for layer in range(self.num_layers):
            k = self.keys[layer]
            if k is not None:
                k[:, :, S:] = self._rotate(k[:, :, S:], -self._base_t)  # (B, H, W, D)
        self.base = 0
        self._base_t.fill_(0)

    # ---- the Cache protocol the models call -------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write this forward's keys/values (B, H, T, D) into their slots; return the keys/values to attend to."""
        plan = self._plan
        if plan is None:
            raise RuntimeError("SinkWindowCache.update called without plan(); feed tokens through StreamingState")
        k, v = self._buffers(layer_idx, key_states, value_states)
        k.index_copy_(2, plan.write, key_states)
        v.index_copy_(2, plan.write, value_states)
        S = self.sink
        if plan.fills_sinks:
            self.sink_keys[layer_idx] = k[:, :, :S].clone()  # (B, H, S, D) as rotated at 0..S-1
            self._sink_pairs[layer_idx] = None
        elif S and self.base:
            # every evicting forward moves base, so the sinks are re-rotated unconditionally once the cache is full
            # (S keys per layer; no per-layer bookkeeping, which a replayed CUDA graph could not see)
            sk, skh = self._sink_pair(layer_idx)
            cs = self._sink_cs
            k[:, :, :S] = torch.addcmul(sk * cs[0], skh, cs[1])  # (B, H, S, D): RoPE by base, in float32
        if plan.length == self.capacity:
            return k, v
        return k[:, :, : plan.length], v[:, :, : plan.length]

    def _sink_pair(self, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(sink keys, their rotate-half) in float32, (B, H, S, D) each, made once per layer."""
        pair = self._sink_pairs[layer_idx]
        if pair is None:
            pair = self._sink_pairs[layer_idx] = sink_pair(self.rotary, self.sink_keys[layer_idx])
        return pair

    def _update_sink_angles(self) -> None:
        """Refill the (2, D) cos/sin row of the current base in place (its address stays fixed for graphs)."""
        if not self.sink or self.keys[0] is None:
            return
        cs = base_angles(self.rotary, self._base_t.reshape(1), self.keys[0].shape[-1])[:, 0]  # (2, D)
        if self._sink_cs is None:
            self._sink_cs = cs
        else:
            self._sink_cs.copy_(cs)

    # ---- a memory replacing a finished turn by slots (CCM) --------------------------------------------------------
    def compact_tail(self, drop: int, keep: int) -> None:
        """Of the newest ``drop + keep`` held tokens remove the first ``drop``; the newest ``keep`` move back.

        Rare (once per chat turn), so simple: every layer is rewritten in cache-local order with keys rotated at
        their local positions (the ring's ``base`` and the sinks' rotation undone), the span removed, the moved keys
        re-rotated by ``-drop``; afterwards physical order is local order, ``head`` and ``base`` are 0.
        """
        n, S = self.filled, self.sink
        a = n - keep - drop
        order = self.slot_order()  # (n,) physical index of each local position
        zero = torch.zeros((), dtype=torch.long, device=self.device)
        for i in range(self.num_layers):
            k, v = self.keys[i], self.values[i]
            if k is None:
                continue
            kl, vl = k[:, :, order].float(), v[:, :, order]  # (B, H, n, D) copies in local order
            if self.base:
                kl[:, :, S:] = self.rotary.rotate(kl[:, :, S:], zero - self.base)
                if self.sink_keys[i] is not None:
                    kl[:, :, :S] = self.sink_keys[i].float()
            moved = self.rotary.rotate(kl[:, :, n - keep :], zero - drop)
            k[:, :, : n - drop] = torch.cat([kl[:, :, :a], moved], dim=2).to(k.dtype)
            v[:, :, : n - drop] = torch.cat([vl[:, :, :a], vl[:, :, n - keep :]], dim=2)
            self.sink_keys[i] = k[:, :, :S].clone() if n - drop >= S else None
            self._sink_pairs[i] = None
        self.filled = n - drop
        self.head = self.base = 0
        self._base_t.fill_(0)
        self._plan = None

    # ---- saving: the buffers (base class) plus the sink keys as first rotated and the ring's state -------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = super().tensors()
        for i, sk in enumerate(self.sink_keys):
            if sk is not None and self.keys[i] is not None:
                out[f"layer{i}.sink_keys"] = sk
        return out

    def meta(self) -> dict[str, int]:
        return {**super().meta(), "head": self.head, "base": self.base}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, int]) -> None:
        super().load(tensors, meta)
        self.head, self.base = int(meta["head"]), int(meta["base"])
        for i in range(self.num_layers):
            sk = tensors.get(f"layer{i}.sink_keys")
            self.sink_keys[i] = sk.to(self.device) if sk is not None else None
            self._sink_pairs[i] = None
        self._base_t.fill_(self.base)
        self._update_sink_angles()
