"""``streaming``: StreamingLLM attention sinks (arXiv 2309.17453) — an endless session with a fixed-size cache.

The cache keeps the first ``sink_tokens`` tokens and the most recent ``window`` tokens (§3.2), and positions are
assigned inside the cache, so the model never sees a distance longer than sink + window. Everything else is the
core :class:`~longctx_llm.runtime.kv_state.KVCacheState` loop; this module overrides three seams:

- ``make_cache``: :class:`~longctx_streaming.cache.SinkWindowCache` (sink + ring, preallocated, in place);
- ``logical_positions``: the next cache slots (planning the eviction for the piece);
- ``rope_positions`` / ``attention``: slot + the cache's RoPE offset; a ring-aware causal mask while a multi-token
  piece is written over evicted slots.

It does not extend what the model can *use*: evicted text is gone (§3.3). Sessions are append-only (no rewind).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch

from longctx_llm import Capabilities, KVCacheState, Strategy
from longctx_llm.errors import ConfigError, InputError, LongctxError, SessionError
from longctx_llm.model import hf_adapter
from longctx_llm.runtime import restore

from .attention import ring_attention, valid_attention
from .cache import SinkWindowCache
from .options import StreamingOptions
from .pool import RingPool
from .shift import ShiftingSinkCache

logger = logging.getLogger(__name__)


class _SinkWindowState(KVCacheState):
    """What both cache layouts share: positions = the next cache slots, append-only sessions, saving."""

    #: whether this layout's full-cache forwards can replay from CUDA graphs (see ``StreamingState.graph_key``)
    graphable = False

    def __init__(self, model, batch_size: int, options: StreamingOptions):
        self.options = options
        graphs = options.cuda_graphs and self.graphable
        super().__init__(model, batch_size, prefill_chunk_size=options.piece, cuda_graphs=graphs)
        self.prefill_align = options.piece  # the window evicts between pieces: their boundaries change the cache

    def _rotary(self) -> hf_adapter.Rotary:
        return hf_adapter.Rotary(inv_freq=self.model.rotary.inv_freq.to(self.model.device))

    def _plan(self, new_tokens: int) -> torch.Tensor:
        """Make room for ``new_tokens`` and return their cache-local positions (T,)."""
        raise NotImplementedError

    def logical_positions(self, new_tokens: int, new_mask: Optional[torch.Tensor]) -> torch.Tensor:
        if new_mask is not None:
            raise InputError(
                "streaming: padded batches are not supported (the sinks would be padding); feed rows one at a time"
            )
        return self._plan(new_tokens)[None, :].expand(self.batch_size, -1)  # (B, T)

    # ---- session API (both layouts) ----------------------------------------------------------------------
    @property
    def cache_tokens(self) -> int:
        """Tokens the cache holds now (never above sink_tokens + window)."""
        return self.cache.filled

    @property
    def cache_entries(self) -> int:
        return self.cache.filled

    @torch.inference_mode()
    def compact_tail(self, drop: int, keep: int) -> None:
        """Remove ``drop`` held tokens just before the newest ``keep`` (CCM: a turn gives way to its slots).

        Tokens already evicted cannot be removed again: ``drop`` is clipped to what the cache still holds of them,
        and once anything was evicted the sinks are never part of it.
        """
        n = self.cache.filled
        if not 0 <= keep <= n:
            raise LongctxError(f"streaming: cannot keep {keep} newest entries, the cache holds {n}")
        protect = self.cache.sink if self.cache.evicted else 0
        drop = max(0, min(drop, n - keep - protect))
        if drop:
            self.cache.compact_tail(drop, keep)
            self.seen -= drop
            self.real_tokens = self.real_tokens - drop
        self._graphs = None

    def rewind(self, length: int) -> None:
        raise LongctxError("streaming: the cache is append-only (evicted tokens cannot be restored); cannot rewind")

    def state_dict(self):
        tensors = {**self.cache.tensors(), "real_tokens": self.real_tokens}
        meta = {"seen": self.seen, "batch_size": self.batch_size, **self.cache.meta()}
        return tensors, meta

    def load_state_dict(self, tensors, meta):
        if int(meta.get("batch_size", 1)) != self.batch_size:
            raise SessionError(f"saved streaming state has batch size {meta.get('batch_size')}, expected {self.batch_size}")
        if int(meta["filled"]) > self.cache.capacity:
            raise SessionError(
                f"saved streaming cache holds {meta['filled']} tokens but this strategy keeps {self.cache.capacity}"
            )
        # every counter against what the saved cache holds, before anything is built from them
        held = restore.cache_length(tensors)
        restore.meta_int(meta, "filled", held, held, "streaming", f"its cache holds {held} entries")
        evicted = restore.meta_int(meta, "evicted", 0, 2**62, "streaming")
        seen = restore.meta_int(meta, "seen", held + evicted, held + evicted, "streaming",
                                f"its cache holds {held} entries and evicted {evicted}")
        window = self.cache.capacity - self.cache.sink
        if "head" in meta:  # the ring layout
            restore.meta_int(meta, "head", 0, max(window - 1, 0), "streaming", f"its ring holds {window} entries")
            restore.meta_int(meta, "base", 0, evicted, "streaming", f"it evicted {evicted} tokens")
        real = restore.check_positions(tensors.get("real_tokens"), self.batch_size, seen, "streaming")
        self.cache = self.make_cache()
        self.cache.load(tensors, meta)
        self.seen = seen
        self.real_tokens = real.to(self.model.device)
        self.padding = None


class StreamingState(_SinkWindowState):
    """The ring layout (``cache.py``): nothing moves on eviction; its own RoPE offset and ring-aware attention."""

    graphable = True

    def make_cache(self) -> SinkWindowCache:
        o = self.options
        cache = SinkWindowCache(self.model.info.num_layers, o.sink_tokens, o.window, self._rotary(), self.model.device)
        cache.fixed_fill = self.cuda_graphs  # decode steps before the first eviction replay a graph too
        return cache

    def _plan(self, new_tokens: int) -> torch.Tensor:
        return self.cache.plan(new_tokens).slots

    def rope_positions(self, logical: torch.Tensor) -> torch.Tensor:
        return logical + self.cache.base  # (B, T): kept ring keys stay valid as base grows (see cache.py)

    def attention(self) -> Optional[hf_adapter.AttentionFn]:
        plan = self.cache._plan
        if plan is not None and plan.valid is not None:
            return valid_attention  # one query into a filling cache, over the whole buffer (unfilled slots masked)
        if plan is None or plan.ordered or plan.write.numel() == 1:
            return None  # plain causal attention over keys in text order (or one query that sees everything)
        return ring_attention

    def attention_extra(self) -> dict[str, Any]:
        plan = self.cache._plan
        if plan is None:
            return {}
        if plan.valid is not None:
            return {"streaming_write": plan.write, "streaming_valid": plan.valid}
        return {"streaming_write": plan.write}

    def graph_key(self, new_tokens: int, all_logits: bool) -> Optional[tuple]:
        """Full-cache forwards of one-token decode or whole prefill pieces, and one-token decode into a filling
        cache, replay from CUDA graphs.

        Once the cache is full every forward is the same GPU program: it writes its keys at the slots in the
        cache's fixed ``write`` buffer, re-rotates the sinks by the fixed ``base`` tensor, and attends over the
        whole buffer (ring mask for pieces, everything for one token). Before that, a one-token step writes at the
        slot in the same fixed buffer and attends over the whole buffer through the fixed mask of held slots (no
        sink rotation: nothing was evicted). Other forwards (prefill pieces while filling, a turn's remainder) run
        eagerly; the runner keeps at most four graphs per session (a chat needs three: pieces, decode, filling decode).
        """
        plan, cache = self.cache._plan, self.cache
        if plan is not None and plan.valid is not None:
            return ("fill", all_logits) if new_tokens == 1 else None
        if plan is None or plan.ordered or plan.fills_sinks or plan.length != cache.capacity or not cache.base:
            return None
        if new_tokens != 1 and new_tokens != self.prefill_chunk_size:
            return None
        return ("ring", new_tokens, all_logits)


class ShiftingStreamingState(_SinkWindowState):
    """The shift layout (``shift.py``): text order at cache-local positions, so the RoPE positions and attention
    of a composed strategy (``strategy: [{name: streaming, layout: shift}, {name: dca}]``) apply unchanged."""

    def make_cache(self) -> ShiftingSinkCache:
        o = self.options
        # the rope mapping is looked up at eviction time: composition replaces ``rope_positions`` after __init__
        return ShiftingSinkCache(
            self.model.info.num_layers, o.sink_tokens, o.window, self._rotary(), self.model.device,
            rope=lambda p: self.rope_positions(p[None])[0],
        )

    def _plan(self, new_tokens: int) -> torch.Tensor:
        return self.cache.plan(new_tokens)


class StreamingStrategy(Strategy):
    """Attention sinks + a recent window; cache size fixed at ``sink_tokens + window`` forever.

    >>> from longctx_llm import Engine                                            # doctest: +SKIP
    >>> engine = Engine("smollm2-135m-instruct", strategy={"name": "streaming", "window": 1024})  # doctest: +SKIP
    """

    name = "streaming"
    Options = StreamingOptions
    capabilities = Capabilities(batching=False, cpu=True, rewind=False, save=True, unbounded=True, compact=True)

    def validate(self, info: hf_adapter.ModelInfo) -> None:
        hf_adapter.require_rope(info, self.name)
        o = self.options
        limit = info.pretraining_length
        if limit and o.sink_tokens + o.window > limit:
            raise ConfigError(
                f"strategy.window: sink_tokens + window = {o.sink_tokens} + {o.window} = {o.sink_tokens + o.window} "
                f"exceeds the model's pretraining length {limit} (valid: window <= {limit - o.sink_tokens}); "
                "to stream with a longer window, combine streaming with DCA"
            )

    def context_window(self, info) -> Optional[int]:
        return None  # unbounded: it streams past its window by evicting

    def attention_span(self, info) -> int:
        return self.options.sink_tokens + self.options.window  # what it keeps, not the text it has streamed

    def row_pool(self, model):
        """Sessions on the ring layout decode together, each on its own ring (``pool.py``); the shift layout (and a
        composition with DCA) decodes one session per forward."""
        return RingPool(self, model, StreamingState) if self.options.layout == "ring" else None

    def new_state(self, model, batch_size: int = 1) -> KVCacheState:
        cls = ShiftingStreamingState if self.options.layout == "shift" else StreamingState
        return cls(model, batch_size, self.options)
