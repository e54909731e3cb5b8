"""StreamingLLM sessions decoding as the rows of one forward (continuous batching, issue 24).

Each session's :class:`~longctx_streaming.cache.SinkWindowCache` is a ring with its own fill, head and RoPE offset
``base``. In the pool the rows' buffers sit side by side, (rows, H, S + W, D) per layer, and every row keeps its
own counters: one decode step writes each row's new key at *its* next slot (the slot after its newest token, or
over its oldest window token once full), rotates its query at its own ``base + slot``, re-rotates its sinks by its
own ``base``, and attends over its own filled slots. Every row does what its session's cache does for a one-token
forward (same slots, same rotations, the same rebase schedule), so a row's reply is its serial reply; when it
leaves, its buffers and counters go back to its session's cache as they are.

Where decode steps replay CUDA graphs (:class:`FixedRowRings`), the buffers hold a power of two of rows, a row joins
into a free one and leaves a free one behind, and everything a step reads besides the buffers (each row's slot,
sink and rotation flags, held slots, sink angles) is refilled in place in tensors of fixed addresses: every step of
a bucket is then the same GPU program, captured once. Free rows feed a dummy token that attends only to itself.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
import torch.nn.functional as F

from longctx_llm import RowPool
from longctx_llm.kernels import cuda_graphs
from longctx_llm.model import hf_adapter

from .attention import valid_attention
from .buffers import SinkBuffers
from .cache import SinkWindowCache, base_angles, sink_pair


class RowRings(SinkBuffers):
    """The rows' rings in one set of buffers; ``plan`` per step, then the model calls ``update`` per layer."""

    def __init__(self, num_layers: int, sink: int, window: int, rotary, device, rebase_every: int):
        super().__init__(num_layers, sink, window, rotary, device)
        self.rebase_every = rebase_every
        self.sink_keys: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, S, D) as first rotated
        self.filled_rows: list[int] = []
        self.heads: list[int] = []
        self.bases: list[int] = []
        self.evicted_rows: list[int] = []
        self._step: Optional[dict[str, torch.Tensor]] = None
        self._joining: list[SinkWindowCache] = []  # rows added since the last step, their buffers not copied yet

    @property
    def rows(self) -> int:
        return len(self.filled_rows)

    def _phys(self, r: int) -> int:
        """Row ``r``'s row in the buffers (here the same: the rows are packed)."""
        return r

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.filled_rows, default=0)

    # ---- rows in and out -------------------------------------------------------------------------------------
    def add(self, cache: SinkWindowCache) -> None:
        """Append a session's ring (batch 1) as the last row (its buffers are copied in at the next step, together
        with every other row joining then: one copy of the pool per step, not per row)."""
        self._joining.append(cache)
        self.filled_rows.append(cache.filled)
        self.heads.append(cache.head)
        self.bases.append(cache.base)
        self.evicted_rows.append(cache.evicted)

    def _gather(self) -> None:
        """Copy the joining rows' buffers in (the sessions' caches stay untouched while their rows run)."""
        if not self._joining:
            return
        S = self.sink
        for i in range(self.num_layers):
            old = [] if self.keys[i] is None else [(self.keys[i], self.values[i], self.sink_keys[i])]
            new = [(c.keys[i], c.values[i], c.sink_keys[i] if c.sink_keys[i] is not None else c.keys[i][:, :, :S])
                   for c in self._joining]
            parts = old + new
            self.keys[i] = torch.cat([k for k, _, _ in parts])
            self.values[i] = torch.cat([v for _, v, _ in parts])
            self.sink_keys[i] = torch.cat([sk.to(self.keys[i].dtype) for _, _, sk in parts])
        self._joining = []

    def remove(self, r: int, into: Optional[SinkWindowCache]) -> bool:
        """Drop row ``r``; with ``into``, that session's cache takes the row's buffers and counters as they are.

        The buffers go back into the session's own tensors, in place, so every address its captured CUDA graphs
        read stays valid; True when they did (False: they were replaced, and the session's graphs must go)."""
        self._gather()
        in_place = True
        if into is not None:
            # every copy first, then the session's cache changes at once (a failed copy leaves it as it was)
            p = self._phys(r)
            keys = [k[p : p + 1].clone() for k in self.keys]
            values = [v[p : p + 1].clone() for v in self.values]
            sinks = [sk[p : p + 1].clone() if self.sink else None for sk in self.sink_keys]
            in_place = _copy_into(into, keys, values, sinks)
            into.filled, into.head, into.base = self.filled_rows[r], self.heads[r], self.bases[r]
            into.evicted = self.evicted_rows[r]
            into._base_t.fill_(into.base)
            into._update_sink_angles()
            into._plan = None
        self._drop(r)
        for counters in (self.filled_rows, self.heads, self.bases, self.evicted_rows):
            del counters[r]
        return in_place

    def _drop(self, r: int) -> None:
        """Take row ``r`` out of the buffers."""
        keep = [i for i in range(self.rows) if i != r]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        for i in range(self.num_layers):
            self.keys[i] = self.keys[i].index_select(0, index)
            self.values[i] = self.values[i].index_select(0, index)
            self.sink_keys[i] = self.sink_keys[i].index_select(0, index)

    # ---- one step ------------------------------------------------------------------------------------------
    def plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Make room for one new token per row; return (slots, rope positions), (B, 1) each."""
        self._gather()
        S, W, C = self.sink, self.window, self.capacity
        write, slots, fills, rotate = [], [], [], []
        for r in range(self.rows):
            if self.bases[r] >= self.rebase_every:
                self._rebase(r)
            n = self.filled_rows[r]
            if n < C:  # nothing evicted yet: the next slot
                write.append(n)
                slots.append(n)
                fills.append(n < S)
                self.filled_rows[r] = n + 1
            else:  # over the oldest window token
                write.append(S + self.heads[r])
                slots.append(C - 1)
                fills.append(False)
                self.heads[r] = (self.heads[r] + 1) % W
                self.bases[r] += 1
                self.evicted_rows[r] += 1
            rotate.append(bool(S) and self.bases[r] > 0 and not fills[-1])
        dev = self.device
        base = torch.tensor(self.bases, dtype=torch.long, device=dev)
        filled = torch.tensor(self.filled_rows, dtype=torch.long, device=dev)
        length = max(self.filled_rows)  # keys past every row's fill are attended by none: not returned
        step = {
            "length": length,
            "rows": torch.arange(self.rows, device=dev),
            "write": torch.tensor(write, dtype=torch.long, device=dev),
            "fills": torch.tensor(fills, dtype=torch.bool, device=dev)[:, None, None, None],
            "rotate": torch.tensor(rotate, dtype=torch.bool, device=dev)[:, None, None, None],
            "valid": (torch.arange(length, device=dev)[None, :] < filled[:, None])[:, None, None, :],  # (B, 1, 1, L)
        }
        if any(rotate):
            step["cs"] = base_angles(self.rotary, base, self.keys[0].shape[-1])[:, :, None, None, :]  # (2, B, 1, 1, D)
        self._step = step
        slot = torch.tensor(slots, dtype=torch.long, device=dev)[:, None]
        return slot, slot + base[:, None]

    def _rebase(self, r: int) -> None:
        """Row ``r``'s ring rotated back by its base (what its session's cache does every ``rebase_every``)."""
        S = self.sink
        delta = torch.tensor(-self.bases[r], dtype=torch.long, device=self.device)
        p = self._phys(r)
        for i in range(self.num_layers):
            k = self.keys[i]
            k[p : p + 1, :, S:] = self._rotate(k[p : p + 1, :, S:], delta)
        self.bases[r] = 0

    # ---- the Cache protocol the models call -------------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write each row's new key/value (B, H, 1, D) at its slot; return the buffers up to the fullest row's fill
        (masked per row)."""
        step = self._step
        k, v = self.keys[layer_idx], self.values[layer_idx]
        rows, write = step["rows"], step["write"]
        k[rows, :, write] = key_states[:, :, 0]
        v[rows, :, write] = value_states[:, :, 0]
        S = self.sink
        if S:
            self.sink_keys[layer_idx] = torch.where(step["fills"], k[:, :, :S], self.sink_keys[layer_idx])
            if "cs" in step:
                sk, half = sink_pair(self.rotary, self.sink_keys[layer_idx])
                cs = step["cs"]
                turned = torch.addcmul(sk * cs[0], half, cs[1]).to(k.dtype)  # (B, H, S, D): RoPE by each base
                k[:, :, :S] = torch.where(step["rotate"], turned, k[:, :, :S])
        L = step["length"]
        return (k, v) if L == self.capacity else (k[:, :, :L], v[:, :, :L])


def _bucket(rows: int) -> int:
    return 1 << max(rows - 1, 0).bit_length()


class FixedRowRings(RowRings):
    """The rows' rings as a CUDA graph can replay them: a power of two of rows in the buffers (free rows between
    the running ones), whole buffers attended with per-row masks, and a step's inputs refilled in place.

    ``generation`` counts the times the buffers were replaced (a bucket outgrown, or emptied to a quarter): the
    pool's captured graphs read the old ones and go with them.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.size = 0  # rows the buffers hold, free ones included
        self.slot_of: list[int] = []  # each row's row in the buffers (row order)
        self.generation = 0

    def _phys(self, r: int) -> int:
        return self.slot_of[r]

    def _allocate(self, size: int, like: SinkWindowCache) -> None:
        """Buffers of ``size`` rows shaped as ``like``'s (a joining cache, or these rings), the running rows copied
        into rows 0.. (packed), and the step tensors."""
        S, C, dev = self.sink, self.capacity, self.device
        old = self.slot_of
        index = torch.tensor(old, dtype=torch.long, device=dev)
        for i in range(self.num_layers):
            k0, v0 = like.keys[i], like.values[i]
            k = k0.new_zeros(size, *k0.shape[1:])
            v = v0.new_zeros(size, *v0.shape[1:])
            sk = k0.new_zeros(size, k0.shape[1], S, k0.shape[-1])
            if old:
                k[: len(old)] = self.keys[i].index_select(0, index)
                v[: len(old)] = self.values[i].index_select(0, index)
                sk[: len(old)] = self.sink_keys[i].index_select(0, index)
            self.keys[i], self.values[i], self.sink_keys[i] = k, v, sk
        self.slot_of = list(range(len(old)))
        self.size = size
        D = like.keys[0].shape[-1]
        self._rows = torch.arange(size, device=dev)
        self._slot_index = torch.arange(C, device=dev)
        self._write = torch.zeros(size, dtype=torch.long, device=dev)
        self._flags = torch.zeros(2, size, 1, 1, 1, dtype=torch.bool, device=dev)  # fills, rotate
        self._filled = torch.ones(size, dtype=torch.long, device=dev)
        self._valid = torch.zeros(size, 1, 1, C, dtype=torch.bool, device=dev)
        self._cs = torch.zeros(2, size, 1, 1, D, dtype=torch.float32, device=dev)
        self.generation += 1

    def _gather(self) -> None:
        if not self._joining:
            return
        rows = len(self.slot_of) + len(self._joining)
        if rows > self.size:
            self._allocate(_bucket(rows), self._joining[0])
        S = self.sink
        for c in self._joining:
            p = next(x for x in range(self.size) if x not in self.slot_of)
            for i in range(self.num_layers):
                self.keys[i][p] = c.keys[i][0]
                self.values[i][p] = c.values[i][0]
                if S:
                    self.sink_keys[i][p] = (c.sink_keys[i] if c.sink_keys[i] is not None else c.keys[i][:, :, :S])[0]
            self.slot_of.append(p)
        self._joining = []

    def _drop(self, r: int) -> None:
        del self.slot_of[r]  # its row in the buffers is free: nothing reads it until a row joins into it
        if self.size > 1 and 4 * len(self.slot_of) <= self.size and self.slot_of:
            self._allocate(_bucket(len(self.slot_of)), self)  # a quarter full: a smaller bucket

    def plan(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._gather()
        S, W, C = self.sink, self.window, self.capacity
        n = self.size
        write, fills, rotate, filled, base = [0] * n, [False] * n, [False] * n, [1] * n, [0] * n  # free rows
        slots = [0] * n
        for r in range(self.rows):
            if self.bases[r] >= self.rebase_every:
                self._rebase(r)
            p, f = self.slot_of[r], self.filled_rows[r]
            if f < C:
                write[p] = slots[p] = f
                fills[p] = f < S
                self.filled_rows[r] = f + 1
            else:
                write[p], slots[p] = S + self.heads[r], C - 1
                self.heads[r] = (self.heads[r] + 1) % W
                self.bases[r] += 1
                self.evicted_rows[r] += 1
            rotate[p] = bool(S) and self.bases[r] > 0 and not fills[p]
            filled[p], base[p] = self.filled_rows[r], self.bases[r]
        dev = self.device
        self._write.copy_(torch.tensor(write, dtype=torch.long))
        self._flags.copy_(torch.tensor([fills, rotate], dtype=torch.bool)[:, :, None, None, None])
        self._filled.copy_(torch.tensor(filled, dtype=torch.long))
        torch.lt(self._slot_index[None, :], self._filled[:, None], out=self._valid.view(n, C))
        base_t = torch.tensor(base, dtype=torch.long, device=dev)
        if S:
            self._cs.copy_(base_angles(self.rotary, base_t, self._cs.shape[-1])[:, :, None, None, :])
        slot = torch.tensor(slots, dtype=torch.long, device=dev)[:, None]
        return slot, slot + base_t[:, None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write each row's new key/value (rows, H, 1, D) at its slot; return the whole buffers (masked per row).
        Every tensor read here has a fixed address, and no Python decision depends on the step."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        k[self._rows, :, self._write] = key_states[:, :, 0]
        v[self._rows, :, self._write] = value_states[:, :, 0]
        S = self.sink
        if S:
            sk = self.sink_keys[layer_idx]
            sk.copy_(torch.where(self._flags[0], k[:, :, :S], sk))
            first, half = sink_pair(self.rotary, sk)
            turned = torch.addcmul(first * self._cs[0], half, self._cs[1]).to(k.dtype)  # RoPE by each row's base
            k[:, :, :S] = torch.where(self._flags[1], turned, k[:, :, :S])
        return k, v


def _copy_into(cache: SinkWindowCache, keys: list, values: list, sinks: list) -> bool:
    """Write a row's buffers into ``cache``'s own tensors (and refresh its float32 sink pairs in place); where one
    is missing or of another shape, or a copy fails, the cache takes the new tensors instead. True: all in place."""
    same = all(
        old is not None and old.shape == new.shape and old.dtype == new.dtype and old.device == new.device
        for olds, news in ((cache.keys, keys), (cache.values, values)) + (((cache.sink_keys, sinks),) if cache.sink else ())
        for old, new in zip(olds, news)
    )
    if same:
        try:
            for olds, news in ((cache.keys, keys), (cache.values, values), (cache.sink_keys, sinks)):
                for old, new in zip(olds, news):
                    if new is not None:
                        old.copy_(new)
            for i, pair in enumerate(cache._sink_pairs):
                if pair is not None:
                    for old, new in zip(pair, sink_pair(cache.rotary, cache.sink_keys[i])):
                        old.copy_(new)
            return True
        except RuntimeError:
            pass  # the complete copies below replace whatever was half written
    cache.keys, cache.values, cache.sink_keys = keys, values, sinks
    cache._sink_pairs = [None] * cache.num_layers
    return False


class RingPool(RowPool):
    """StreamingLLM sessions (the ring layout) decoding together, each on its own ring."""

    def __init__(self, strategy, loaded, state_type: type):
        super().__init__()
        self.strategy, self.loaded = strategy, loaded
        self.state_type = state_type  # the ring layout's state class (a subclass carries other seams: not taken)
        self.rings: Optional[RowRings] = None
        #: decode steps replay CUDA graphs (one per bucket of rows), as a session's own steps do
        self.graphs = bool(strategy.options.cuda_graphs) and cuda_graphs.available(torch.device(loaded.device))
        self._runner, self._generation = None, 0

    def accepts(self, state) -> bool:
        own = ("logical_positions", "rope_positions", "attention", "attention_extra", "forward", "make_cache")
        return (
            type(state) is self.state_type
            and not any(name in vars(state) for name in own)  # a composition carries another strategy's seams
            and state.batch_size == 1
            and state.options == self.strategy.options
            and isinstance(state.cache, SinkWindowCache)
            and state.cache.keys[0] is not None
            and state.cache.rebase_every == self.strategy.options.window
        )

    def join(self, owner: Any, state) -> None:
        if self.rings is None:
            c = state.cache
            kind = FixedRowRings if self.graphs else RowRings
            self.rings = kind(c.num_layers, c.sink, c.window, c.rotary, c.device, c.rebase_every)
        with torch.inference_mode():
            self.rings.add(state.cache)
        self.owners.append(owner)

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        rings = self.rings
        slot, rope = rings.plan()
        if isinstance(rings, FixedRowRings):
            return self._fixed_step(rings, tokens, slot, rope)
        ids = torch.tensor(tokens, dtype=torch.long, device=self.loaded.device)[:, None]
        ctx = hf_adapter.AttentionContext(
            q_positions=slot, attention=valid_attention, extra={"streaming_valid": rings._step["valid"]}
        )
        with getattr(self.loaded, "lock", None) or contextlib.nullcontext():  # one forward at a time per model
            logits = hf_adapter.forward(self.loaded.model, ids, position_ids=rope, cache=rings, ctx=ctx)
        return logits[:, -1, :]

    def _fixed_step(self, rings: "FixedRowRings", tokens: list[int], slot, rope) -> torch.Tensor:
        """One step of every row (free rows feed token 0) through the bucket's graph; the rows' logits, row order."""
        if len(tokens) != rings.rows:
            raise ValueError(f"a pool step feeds one token per row: {rings.rows} rows, got {len(tokens)} tokens")
        fed = [0] * rings.size
        for p, tok in zip(rings.slot_of, tokens):
            fed[p] = tok
        ids = torch.tensor(fed, dtype=torch.long, device=self.loaded.device)[:, None]
        runner = self._runner
        if runner is None or runner.owner is not rings or self._generation != rings.generation:
            runner = self._runner = cuda_graphs.GraphRunner(rings)
            self._generation = rings.generation
        model, extra = self.loaded.model, {"streaming_valid": rings._valid}

        def forward(st: dict[str, torch.Tensor]) -> torch.Tensor:
            ctx = hf_adapter.AttentionContext(q_positions=st["q_positions"], attention=valid_attention, extra=dict(extra))
            return hf_adapter.forward(model, st["input_ids"], position_ids=st["position_ids"], cache=rings, ctx=ctx)

        with getattr(self.loaded, "lock", None) or contextlib.nullcontext():  # one forward at a time per model
            logits = runner.run(("rows", rings.size), {"input_ids": ids, "position_ids": rope, "q_positions": slot},
                                forward)
        index = torch.tensor(rings.slot_of, dtype=torch.long, device=logits.device)
        return logits[:, -1, :].index_select(0, index)

    @torch.inference_mode()
    def leave(self, owner: Any, state, gained: int, keep: bool) -> None:
        r = self.row(owner)
        in_place = self.rings.remove(r, state.cache if keep else None)
        del self.owners[r]
        if keep:
            state.seen += gained
            state.real_tokens = state.real_tokens + gained
            if not in_place:
                state._graphs = None  # its graphs read the tensors the cache no longer holds
        if not self.owners:
            self.rings, self._runner = None, None
