"""The KV-cache state most strategies are: chunked prefill, left padding, positions, and the CUDA fast path.

:class:`KVCacheState` implements ``forward`` once and lets a strategy override only its seams:

- :meth:`KVCacheState.make_cache` — the cache (StreamingLLM: sink + ring window);
- :meth:`KVCacheState.logical_positions` — where new tokens sit (StreamingLLM: the next cache slots);
- :meth:`KVCacheState.rope_positions` — the positions fed to RoPE (DCA: ``j mod s``);
- :meth:`KVCacheState.attention` — the attention function (DCA: three partial attentions, LSE-merged).

Strategies that act differently (RCC encodes the prompt once, window by window) override ``forward`` itself. What
edits the cache between forwards (rewind, the memories' splice and compaction, saving) is
:class:`~.kv_edits.KVCacheEdits`, which this class extends. A forward may carry embeddings instead of token ids and
per-call :class:`~longctx_llm.model.hf_adapter.ForwardHooks` (CCM's conditional LoRA on its compression tokens).

With ``static_cache`` keys/values live in a preallocated :class:`~longctx_llm.kernels.kv_cache.StaticCache` and a
one-token decode step is a fixed GPU program that ``cuda_graphs`` replays: that fast path is
:class:`~.fast_decode.FastDecode`, the other part this class extends.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch

from ..errors import LongctxError
from ..kernels.cuda_graphs import GraphRunner
from ..kernels.kv_cache import StaticCache
from ..model import hf_adapter
from .fast_decode import FastDecode, cuda_graphs_available
from .kv_edits import KVCacheEdits
from .progress import progress_bar


class KVCacheState(KVCacheEdits, FastDecode):
    """A KV-cache state with chunked prefill and left-padding support; override the seams, not ``forward``.

    ``static_cache``: keep keys/values in a preallocated :class:`~longctx_llm.kernels.kv_cache.StaticCache` instead of
    transformers' ``DynamicCache``; a one-token decode step is then a *fixed* step (it writes one slot and attends
    through a device-side valid length), which ``cuda_graphs`` replays from a CUDA graph. The attention function
    must handle ``extra["decode"]`` (the core's plain attention and DCA's do).
    """

    #: longest piece fed in one forward during prefill; bounds activation memory (None: no chunking)
    prefill_chunk_size: Optional[int] = 2048

    def __init__(
        self,
        model,
        batch_size: int = 1,
        prefill_chunk_size: Optional[int] = None,
        *,
        cuda_graphs: bool = False,
        static_cache: bool = False,
        compile_steps: bool = False,
        lookahead: Optional[bool] = None,
    ):
        self.model = model  # LoadedModel
        self.batch_size = batch_size
        if prefill_chunk_size is not None:
            self.prefill_chunk_size = prefill_chunk_size
        #: replay forwards that ``graph_key`` names from CUDA graphs (only on a CUDA device)
        self.cuda_graphs = bool(cuda_graphs) and cuda_graphs_available(model)
        self.static_cache = bool(static_cache)
        #: run graph-captured decode steps through torch.compile (fuses the model's small kernels)
        self.compile_steps = bool(compile_steps) and self.cuda_graphs
        self._graphs: Optional[GraphRunner] = None
        self._graph_generation = 0
        self._first: Optional[torch.Tensor] = None  # (B,) first real key per row when padding is a left prefix
        self._fixed = False  # the forward being run is a fixed decode step
        self.cache = self.make_cache()
        #: the CUDA fast path (preallocated cache, graph-replayed steps): rewinding a token is a length change
        self.lookahead = (self.cuda_graphs if lookahead is None else bool(lookahead)) and isinstance(
            self.cache, StaticCache)
        self.seen = 0
        self.padding: Optional[torch.Tensor] = None  # (B, seen) bool, None while no row has padding
        self.real_tokens = torch.zeros(batch_size, dtype=torch.long, device=model.device)  # (B,)

    # ---- seams -------------------------------------------------------------------------------------------
    def make_cache(self):
        if self.static_cache:
            layers = self.model.model.config.get_text_config().num_hidden_layers
            return StaticCache(layers, self.batch_size, self.model.device)
        return hf_adapter.new_dynamic_cache(self.model.model)

    def reserve(self, tokens: int) -> None:
        if isinstance(self.cache, StaticCache):
            self.cache.reserve(tokens)

    def logical_positions(self, new_tokens: int, new_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T) positions of ``new_tokens`` new tokens in the sequence attended to (default: the text).

        Called once per forward piece, before the model runs. Strategies that assign positions inside their cache
        override it (StreamingLLM: the next cache slots, arXiv 2309.17453 §3.2).
        """
        device = self.real_tokens.device
        if new_mask is None:
            return self.real_tokens[:, None] + torch.arange(new_tokens, device=device)[None, :]
        return (self.real_tokens[:, None] + new_mask.long().cumsum(-1) - 1).clamp_min(0)

    def rope_positions(self, logical: torch.Tensor) -> torch.Tensor:
        """Positions fed to RoPE for new tokens at ``logical`` (B, T) positions."""
        return logical

    def attention(self) -> Optional[hf_adapter.AttentionFn]:
        """The attention function (None: plain causal attention)."""
        return None

    def attention_extra(self) -> dict[str, Any]:
        return {}

    # ---- the one forward ----------------------------------------------------------------------------------
    def _chunk(self, ids, mask, all_logits: bool, embeds=None, hooks=None) -> torch.Tensor:
        # One forward at a time per loaded model: sessions in other threads share it, and a CUDA graph capture must
        # not see another thread's kernels (they would invalidate it). Per piece, so long prefills interleave.
        lock = getattr(self.model, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            return self._chunk_locked(ids, mask, all_logits, embeds, hooks)

    def _chunk_locked(self, ids, mask, all_logits: bool, embeds=None, hooks=None) -> torch.Tensor:
        B, T = (ids if ids is not None else embeds).shape[:2]
        device = (ids if ids is not None else embeds).device
        new_mask = mask.bool() if mask is not None else None
        if new_mask is not None and bool(new_mask.all()):
            new_mask = None
        logical = self.logical_positions(T, new_mask)
        if self.padding is None and new_mask is not None:
            self.padding = torch.ones(B, self.seen, dtype=torch.bool, device=device)
        if self.padding is not None:
            piece = new_mask if new_mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
            key_padding = torch.cat([self.padding, piece], dim=1)
        else:
            key_padding = None
        rope = self.rope_positions(logical)
        static = isinstance(self.cache, StaticCache)
        self._fixed = fixed = self._fixed_step(T, new_mask)
        if static:
            self.cache.begin(T, fixed=fixed, first=self._first if key_padding is not None else None)
        replayable = hooks is None or hooks.replay_key is not None  # hooks that are the same program every call
        plain = (key_padding is None or fixed) and embeds is None and replayable
        key = self.graph_key(T, all_logits) if self.cuda_graphs and plain else None
        if key is not None and hooks is not None:
            key = (key, hooks.replay_key)
        try:
            if key is not None:
                logits = self._graphed_forward(key, ids, rope, logical, all_logits, hooks)
            else:
                extra = self.attention_extra()
                if fixed:
                    extra = {**extra, "decode": self.cache.view}
                ctx = hf_adapter.AttentionContext(
                    q_positions=logical, key_padding=None if fixed else key_padding, attention=self.attention(),
                    extra=extra,
                )
                logits = hf_adapter.forward(
                    self.model.model, ids, position_ids=rope, cache=self.cache, ctx=ctx,
                    logits_to_keep=0 if all_logits else 1, inputs_embeds=embeds, hooks=hooks,
                )
        finally:
            self._fixed = False
        if static:
            self.cache.commit(T)
        if new_mask is not None:
            self._first = None
        self.padding = key_padding
        self.real_tokens = self.real_tokens + (T if new_mask is None else new_mask.long().sum(-1))
        self.seen += T
        return logits

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask=None, *, all_logits=False, inputs_embeds=None, hooks=None):
        """Feed (B, T) token ids, or (B, T, H) ``inputs_embeds``, with optional per-call ``hooks``."""
        if input_ids is not None:
            input_ids = input_ids.to(self.model.device)
        else:
            inputs_embeds = inputs_embeds.to(self.model.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.model.device)
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if B != self.batch_size:
            raise LongctxError(f"state was made for batch size {self.batch_size}, got {B} rows")
        step = self.prefill_chunk_size or T
        if T <= step or hooks is not None:  # hooks may hold tensors for the whole call: never split it
            return self._chunk(input_ids, attention_mask, all_logits, inputs_embeds, hooks)
        outs = []
        with progress_bar(total=T, desc="prefill", unit="tok", enabled=T >= 8 * step) as bar:
            for start in range(0, T, step):
                sl = slice(start, start + step)
                m = attention_mask[:, sl] if attention_mask is not None else None
                ids = input_ids[:, sl] if input_ids is not None else None
                emb = inputs_embeds[:, sl] if inputs_embeds is not None else None
                out = self._chunk(ids, m, all_logits, emb, hooks)
                if all_logits:
                    outs.append(out)
                bar.update(out.shape[1] if all_logits else min(step, T - start))
        return torch.cat(outs, dim=1) if all_logits else out

    # ---- what memories may edit ------------------------------------------------------------------------------
    @property
    def editable(self) -> bool:
        """True when keys sit at RoPE position = cache index (the positions and RoPE seams are the defaults) and no
        row is padded: then removing entries and re-rotating the later keys keeps every distance right."""
        # bound methods: an instance may carry another state's seam (a composed strategy), not only a subclass
        plain = all(
            getattr(getattr(self, m), "__func__", None) is getattr(KVCacheState, m)
            for m in ("logical_positions", "rope_positions")
        )
        return plain and self.padding is None and self.model.info.has_rope
