"""Many sessions' caches as the rows of one KV-cache state: what continuous batching decodes in one forward.

Each session keeps its own state (batch 1) between turns. While its reply is decoded beside others, its cache is
a row of a :class:`KVPool`: a state of the engine's strategy whose :class:`~longctx_llm.kernels.kv_cache.StaticCache`
holds every running reply, right-aligned at the pool's length L and left-padded (row r's keys are
``[L - length_r, L)``). One decode step is then one forward of (rows, 1) tokens: every row writes its new key at
slot L and attends over its own ``[first_r, L + 1)`` (the fixed decode step of
:class:`~longctx_llm.runtime.kv_state.KVCacheState`, which already takes a left-padded batch); its RoPE position is
its own token count, so each row computes what it would compute alone.

A row joins with its session's cache copied in (:meth:`KVPool.join`) and leaves with the entries it gained copied back
to its session (:meth:`KVPool.leave`); both rebuild the buffers at the new row count (once per request, not per
step), and a leave drops the padding that no row needs any more.

Which strategies pool: a strategy names its pool (:meth:`~longctx_llm.runtime.strategy.Strategy.row_pool`, a
:class:`~.row_pool.RowPool`). The default, :class:`KVPool`, takes states that are plain :class:`KVCacheState` caches
(their seams — positions, RoPE, attention — are per row; ``full``, ``dca`` and memories over them such as CCM); a
strategy with a cache or a forward of its own brings its own pool (StreamingLLM: a ring per row; RCC: its decoders in
a :class:`KVPool`, the reader LoRA per row). A state no pool accepts (a composition) decodes on its own, one row per
forward.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import LongctxError
from ..kernels.kv_cache import StaticCache
from ..model import hf_adapter
from .kv_state import KVCacheState
from .row_pool import RowPool


def pool_for(strategy, loaded) -> Optional[RowPool]:
    """The pool the scheduler runs ``strategy``'s rows in: the strategy's own, else :class:`KVPool` when it batches
    padded rows, else None (one forward per request)."""
    own = strategy.row_pool(loaded)
    if own is not None:
        return own
    return KVPool(strategy, loaded) if strategy.capabilities.batching else None


def poolable(strategy, state) -> bool:
    """Whether ``state`` (a session's, batch 1) can decode as a row of a :class:`KVPool` of ``strategy``."""
    return (
        bool(strategy.capabilities.batching)
        and isinstance(state, KVCacheState)
        and type(state).make_cache is KVCacheState.make_cache
        and type(state).forward is KVCacheState.forward
        and state.batch_size == 1
        and state.padding is None
        and state.seen > 0
    )


class KVPool(RowPool):
    """Plain KV caches as the rows of one state of the strategy (batch = rows), right-aligned, left-padded.

    With ``buckets`` (the default where decode steps replay CUDA graphs) the pool's state has room for a power of two
    rows: a row joins into a free slot and leaves a hole (fully padded; it feeds a dummy token that nothing reads)
    by editing the buffers in place, so the pool keeps its state, cache and captured graphs across joins and leaves
    within a bucket. The buffers are rebuilt only when the rows outgrow the bucket, fall to a quarter of it, or the
    cache must grow. Without ``buckets`` (CPU: no graphs to keep, and a hole would cost compute) the state has
    exactly one row per session and every join and leave rebuilds it.
    """

    def __init__(self, strategy, loaded, *, buckets: Optional[bool] = None):
        super().__init__()
        self.strategy, self.loaded = strategy, loaded
        self.state: Optional[KVCacheState] = None
        self.lengths: list[int] = []  # entries each row holds (in owner order)
        self.slots: list[int] = []  # each owner's row of the state (in owner order, ascending)
        self._masks: Optional[tuple] = None  # (capacity, slots), their rows and free-slot mask on the device
        self.buckets = buckets  # None: decided by the strategy's states (CUDA graphs on or not)

    def accepts(self, state) -> bool:
        return poolable(self.strategy, state)

    @property
    def capacity(self) -> int:
        """Rows the pool's state holds (free slots included)."""
        return self.state.batch_size if self.state is not None else 0

    def _bucketed(self) -> bool:
        if self.buckets is None:
            self.buckets = bool(self.strategy.new_state(self.loaded, 1).cuda_graphs)
        return self.buckets

    def _size_for(self, rows: int) -> int:
        return 1 << max(rows - 1, 0).bit_length() if self._bucketed() else rows

    # ---- rows in and out ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def join(self, owner: Any, state: KVCacheState) -> None:
        """Add ``state``'s cache (a session's, unpadded, batch 1) as a new row."""
        if self.state is not None and len(self.owners) < self.capacity and self._bucketed():
            self._join_in_place(owner, state)
            return
        layers = hf_adapter.cache_kv(state.cache)
        n = state.seen
        B, L = len(self), self.state.seen if self.state is not None else 0
        C, L2 = self._size_for(B + 1), max(L, n)
        rows = torch.tensor(self.slots, dtype=torch.long, device=self.loaded.device)
        old = hf_adapter.cache_kv(self.state.cache) if B else []
        keys, values = [], []
        for i, (k, v) in enumerate(layers):
            nk = k.new_zeros(C, k.shape[1], L2, k.shape[-1])
            nv = v.new_zeros(C, v.shape[1], L2, v.shape[-1])
            if B:
                ok, ov = old[i]
                nk[:B, :, L2 - L :] = ok.index_select(0, rows)
                nv[:B, :, L2 - L :] = ov.index_select(0, rows)
            nk[B, :, L2 - n :] = k[0, :, :n]
            nv[B, :, L2 - n :] = v[0, :, :n]
            keys.append(nk)
            values.append(nv)
        padding = torch.zeros(C, L2, dtype=torch.bool, device=self.loaded.device)
        real = torch.zeros(C, dtype=torch.long, device=self.loaded.device)
        if B:
            pad = self.state.padding
            padding[:B, L2 - L :] = pad.index_select(0, rows) if pad is not None else True
            real[:B] = self.state.real_tokens.index_select(0, rows)
        padding[B, L2 - n :] = True
        real[B] = state.real_tokens[0]
        self._rebuild(keys, values, padding, real)
        self.owners.append(owner)
        self.lengths.append(n)
        self.slots = list(range(B + 1))

    def _join_in_place(self, owner: Any, state: KVCacheState) -> None:
        """Write ``state``'s cache into a free slot of the pool's buffers (shifting every row right first when it
        is longer than the pool); the state, its cache and its graphs stay."""
        pool, cache = self.state, self.state.cache
        n, L = state.seen, self.state.seen
        if n > L:
            self._shift(n)
            L = n
        slot = next(s for s in range(self.capacity) if s not in self.slots)
        for (k, v), (nk, nv) in zip(cache.layers(), hf_adapter.cache_kv(state.cache)):
            k[slot, :, L - n :] = nk[0, :, :n]
            v[slot, :, L - n :] = nv[0, :, :n]
        pool.padding[slot] = False
        pool.padding[slot, L - n :] = True
        real = pool.real_tokens.clone()
        real[slot] = state.real_tokens[0]
        pool.real_tokens = real
        pool._first = None
        at = next((i for i, s in enumerate(self.slots) if s > slot), len(self.slots))
        self.owners.insert(at, owner)
        self.lengths.insert(at, n)
        self.slots.insert(at, slot)

    def _shift(self, length: int) -> None:
        """Move every row's entries so that the pool holds ``length`` positions (rows stay right-aligned: a longer
        pool pads every row on the left, a shorter one drops padding), in the same buffers."""
        pool, cache = self.state, self.state.cache
        L = pool.seen
        if length == L:
            return
        cache.reserve(length + 1)
        for k, v in zip(cache.keys, cache.values):
            if k is None:
                continue
            for buf in (k, v):
                held = buf[:, :, max(L - length, 0) : L].clone()
                buf[:, :, length - held.shape[2] : length] = held
        pad = pool.padding if pool.padding is not None else torch.ones(
            self.capacity, L, dtype=torch.bool, device=self.loaded.device)
        if length > L:
            pad = torch.cat([pad.new_zeros(pad.shape[0], length - L), pad], dim=1)
        else:
            pad = pad[:, L - length :]
        cache.length = length
        pool.seen = length
        pool.padding = pad
        pool._first = None

    def leave(self, owner: Any, state, gained: int, keep: bool) -> None:
        tail = self._remove(owner, gained)
        if keep and gained:
            append_entries(state, tail)

    @torch.inference_mode()
    def _remove(self, owner: Any, gained: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Remove ``owner``'s row; return its newest ``gained`` entries per layer, (1, H, gained, D) copies."""
        r = self.row(owner)
        slot, L = self.slots[r], self.state.seen
        layers = hf_adapter.cache_kv(self.state.cache)
        tail = [(k[slot : slot + 1, :, L - gained :].clone(), v[slot : slot + 1, :, L - gained :].clone())
                for k, v in layers]
        del self.owners[r], self.lengths[r], self.slots[r]
        if not self.owners:
            self.state, self.slots = None, []
            return tail
        L2 = max(self.lengths)  # right-aligned rows: the padding left of every row's first key goes
        if self._bucketed() and 4 * len(self.owners) > self.capacity:
            pool = self.state
            pool.padding = pool.padding.clone()
            pool.padding[slot] = False  # a hole: its keys are masked (its first key is past the end)
            real = pool.real_tokens.clone()
            real[slot] = 0
            pool.real_tokens = real
            pool._first = None
            self._shift(L2)
            return tail
        rows = torch.tensor(self.slots, device=self.loaded.device)
        keys = [k.index_select(0, rows)[:, :, L - L2 :] for k, _ in layers]
        values = [v.index_select(0, rows)[:, :, L - L2 :] for _, v in layers]
        padding = self.state.padding.index_select(0, rows)[:, L - L2 :]
        real = self.state.real_tokens.index_select(0, rows)
        C, B = self._size_for(len(rows)), len(rows)
        if C > B:  # free slots of a smaller bucket
            keys = [torch.cat([k, k.new_zeros(C - B, *k.shape[1:])]) for k in keys]
            values = [torch.cat([v, v.new_zeros(C - B, *v.shape[1:])]) for v in values]
            padding = torch.cat([padding, padding.new_zeros(C - B, L2)])
            real = torch.cat([real, real.new_zeros(C - B)])
        self._rebuild(keys, values, padding, real)
        self.slots = list(range(B))
        return tail

    def _rebuild(self, keys, values, padding, real_tokens) -> None:
        B, L = padding.shape
        state = self.strategy.new_state(self.loaded, B)
        state.static_cache = True  # the pool decodes through fixed steps (per-row first key), on any device
        layers = self.loaded.model.config.get_text_config().num_hidden_layers
        state.cache = StaticCache(layers, B, self.loaded.device, reserve=L + 64)
        for i, (k, v) in enumerate(zip(keys, values)):
            state.cache.set_layer(i, k, v)
        state.seen = L
        state.padding = padding
        state.real_tokens = real_tokens.clone()
        state._first = None
        self.state = state

    # ---- one step ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, tokens: list[int], hooks=None) -> torch.Tensor:
        """Feed one token per row (in row order), with per-call ``hooks`` if given; return the next logits
        (rows, V). Free slots feed token 0, and their logits are dropped."""
        device = self.loaded.device
        full = len(self.slots) == self.capacity
        if not full and hooks is not None:
            raise LongctxError("per-call hooks need a pool without free slots (KVPool(..., buckets=False))")
        fed = list(tokens)
        if not full:  # free slots feed token 0
            fed = [0] * self.capacity
            for slot, token in zip(self.slots, tokens):
                fed[slot] = token
        logits = self.state.forward(torch.tensor(fed, dtype=torch.long, device=device)[:, None], hooks=hooks)[:, -1, :]
        for i in range(len(self.lengths)):
            self.lengths[i] += 1
        if full:
            return logits
        # a free slot stays at position 0: its dummy tokens must not climb past the context window (a RoPE that
        # rescales by the batch's largest position, such as transformers' "dynamic", would change every row)
        rows, free = self._slot_masks()
        self.state.real_tokens = self.state.real_tokens.masked_fill(free, 0)
        return logits.index_select(0, rows)

    def _slot_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The occupied rows and the free-slot mask on the device, made again only when the rows change (not at
        every step)."""
        key = (self.capacity, tuple(self.slots))
        if self._masks is None or self._masks[0] != key:
            device = self.loaded.device
            rows = torch.tensor(self.slots, dtype=torch.long, device=device)
            free = torch.ones(self.capacity, dtype=torch.bool, device=device).index_fill_(0, rows, False)
            self._masks = (key, rows, free)
        return self._masks[1], self._masks[2]


@torch.inference_mode()
def append_entries(state: KVCacheState, entries: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Append key/value entries (1, H, n, D per layer, computed elsewhere for the next positions) to a session's
    state, as if its forward had fed them.

    A preallocated cache takes them into its own buffers (it bumps its ``generation`` only when it must grow), so
    the session's captured CUDA graphs stay valid and a pooled reply does not cost it their capture; any other
    cache gets new tensors, and its graphs go."""
    n = entries[0][0].shape[2] if entries else 0
    if not n:
        return
    cache = state.cache
    if isinstance(cache, StaticCache):
        cache.crop(state.seen)
        cache.append(entries)
    else:
        for i, ((k, v), (nk, nv)) in enumerate(zip(hf_adapter.cache_kv(cache), entries)):
            hf_adapter.set_cache_kv(cache, i, torch.cat([k[:, :, : state.seen], nk.to(k.dtype)], dim=2),
                                    torch.cat([v[:, :, : state.seen], nv.to(v.dtype)], dim=2))
        state._graphs = None
    state.seen += n
    state.real_tokens = state.real_tokens + n
    state._first = None
