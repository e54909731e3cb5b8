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
    """Plain KV caches as the rows of one state of the strategy (batch = rows), right-aligned, left-padded."""

    def __init__(self, strategy, loaded):
        super().__init__()
        self.strategy, self.loaded = strategy, loaded
        self.state: Optional[KVCacheState] = None
        self.lengths: list[int] = []  # entries each row holds

    def accepts(self, state) -> bool:
        return poolable(self.strategy, state)

    # ---- rows in and out ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def join(self, owner: Any, state: KVCacheState) -> None:
        """Add ``state``'s cache (a session's, unpadded, batch 1) as a new row."""
        layers = hf_adapter.cache_kv(state.cache)
        n = state.seen
        B, L = len(self), self.state.seen if self.state is not None else 0
        L2 = max(L, n)
        device = self.loaded.device
        keys, values = [], []
        for i, (k, v) in enumerate(layers):
            nk = k.new_zeros(B + 1, k.shape[1], L2, k.shape[-1])
            nv = v.new_zeros(B + 1, v.shape[1], L2, v.shape[-1])
            if B:
                ok, ov = hf_adapter.cache_kv(self.state.cache)[i]
                nk[:B, :, L2 - L :] = ok
                nv[:B, :, L2 - L :] = ov
            nk[B, :, L2 - n :] = k[0, :, :n]
            nv[B, :, L2 - n :] = v[0, :, :n]
            keys.append(nk)
            values.append(nv)
        padding = torch.zeros(B + 1, L2, dtype=torch.bool, device=device)
        if B:
            old = self.state.padding
            padding[:B, L2 - L :] = old if old is not None else True
        padding[B, L2 - n :] = True
        real = state.real_tokens if not B else torch.cat([self.state.real_tokens, state.real_tokens])
        self._rebuild(keys, values, padding, real)
        self.owners.append(owner)
        self.lengths.append(n)

    def leave(self, owner: Any, state, gained: int, keep: bool) -> None:
        tail = self._remove(owner, gained)
        if keep and gained:
            append_entries(state, tail)

    @torch.inference_mode()
    def _remove(self, owner: Any, gained: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Remove ``owner``'s row; return its newest ``gained`` entries per layer, (1, H, gained, D) copies."""
        r = self.row(owner)
        L = self.state.seen
        layers = hf_adapter.cache_kv(self.state.cache)
        tail = [(k[r : r + 1, :, L - gained :].clone(), v[r : r + 1, :, L - gained :].clone()) for k, v in layers]
        del self.owners[r]
        del self.lengths[r]
        if not self.owners:
            self.state = None
            return tail
        keep = torch.tensor([i for i in range(len(self.owners) + 1) if i != r], device=self.loaded.device)
        L2 = max(self.lengths)  # right-aligned rows: the padding left of every row's first key goes
        keys = [k.index_select(0, keep)[:, :, L - L2 :] for k, _ in layers]
        values = [v.index_select(0, keep)[:, :, L - L2 :] for _, v in layers]
        padding = self.state.padding.index_select(0, keep)[:, L - L2 :]
        self._rebuild(keys, values, padding, self.state.real_tokens.index_select(0, keep))
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
        (rows, V)."""
        ids = torch.tensor(tokens, dtype=torch.long, device=self.loaded.device)[:, None]
        logits = self.state.forward(ids, hooks=hooks)[:, -1, :]
        for i in range(len(self.lengths)):
            self.lengths[i] += 1
        return logits


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
