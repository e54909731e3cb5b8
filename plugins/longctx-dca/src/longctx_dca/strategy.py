"""The ``dca`` strategy: Dual Chunk Attention plugged into a KV cache through two seams.

- :meth:`DCAState.rope_positions`: every token is rotated at ``position mod s`` (DCA §3: keys live at ``j mod s``,
  so a cache of rotated keys never needs re-rotation; queries arrive at the intra position ``i mod s``);
- :meth:`DCAState.attention`: the three-part attention (:mod:`longctx_dca.attention`), which re-rotates the queries
  to the successive and inter positions with the model's own RoPE (``hf_adapter.Rotary``).

Nothing is patched and nothing is process-wide: the attention function travels with each forward call in the
``AttentionContext``, so another model in the same process is untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from pydantic import ValidationError

from longctx_llm.config import format_validation_error
from longctx_llm.errors import ConfigError
from longctx_llm.model import hf_adapter
from longctx_llm.runtime import Capabilities, KVCacheState, Strategy, fast_decode_defaults

from .attention import Geometry, dca_attention, dca_decode
from .options import DCAOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sizes:
    """DCA sizes resolved against one model (every derived value is computed here, once)."""

    pretraining_length: int
    chunk_size: int
    local_window: int
    max_length: int

    @property
    def chunk_len(self) -> int:
        return self.chunk_size - self.local_window


def resolve_sizes(options: DCAOptions, info: hf_adapter.ModelInfo) -> Sizes:
    """Defaults from the paper (§4.1: chunk_size 3L/4, local_window L/8, so w = chunk_size/6), checked against L."""
    L = options.pretraining_length or info.pretraining_length
    if not L:
        raise ConfigError(
            f"strategy.pretraining_length: model_type {info.model_type!r} declares no max_position_embeddings; "
            "set pretraining_length (a positive number of tokens)"
        )
    chunk = options.chunk_size or (3 * L) // 4
    if chunk >= L:
        raise ConfigError(
            f"strategy.chunk_size: {chunk} must be smaller than the pretraining length {L} "
            f"(valid: local_window < chunk_size < {L}; default {(3 * L) // 4})"
        )
    window = options.local_window or (L // 8 if options.chunk_size is None else max(1, chunk // 6))
    if window >= chunk:
        raise ConfigError(
            f"strategy.local_window: {window} must be smaller than chunk_size {chunk} (valid: 0 < local_window < {chunk})"
        )
    return Sizes(L, chunk, window, options.max_length or 8 * L)


class DCAState(KVCacheState):
    """A KV cache whose keys sit at ``j mod s`` and whose attention is DCA's three-part attention."""

    def __init__(self, model, batch_size: int, sizes: Sizes, options: DCAOptions):
        self.sizes = sizes
        self.geometry = Geometry(
            chunk_len=sizes.chunk_len,
            local_window=sizes.local_window,
            pretraining_length=sizes.pretraining_length,
            temperature_scaling=options.temperature_scaling,
            temperature_power=options.temperature_power,
            temperature_parts=options.temperature_parts,
        )
        self.backend = options.backend
        static, graphs = fast_decode_defaults(model, options.static_cache, options.cuda_graphs)
        # aligned with DCA chunks, each prefill forward is one chunk: the intra part is one square causal call
        super().__init__(
            model, batch_size, prefill_chunk_size=options.prefill_chunk_size or sizes.chunk_len,
            static_cache=static, cuda_graphs=graphs, compile_steps=options.compile, lookahead=options.lookahead,
        )
        self._attention = self._make_attention()

    def rope_positions(self, logical: torch.Tensor) -> torch.Tensor:
        return logical % self.geometry.chunk_len  # (B, T)

    def attention(self) -> Optional[hf_adapter.AttentionFn]:
        return self._attention

    def _make_attention(self) -> hf_adapter.AttentionFn:
        rotary = self.model.rotary
        rotate, inv_freq = rotary.rotate, rotary.inv_freq  # inv_freq: the fused (Triton) query rotation on CUDA
        g, backend = self.geometry, self.backend

        def attention(module, query, key, value, ctx: hf_adapter.AttentionContext, *, scaling, dropout=0.0, **_):
            # query (B, H, T, D) at i mod s; key/value (B, Hkv, K, D): the whole cache, keys at j mod s
            view = ctx.extra.get("decode")
            if view is not None:  # a fixed decode step: one fused call over the preallocated cache
                step = ctx.extra.setdefault("dca_step", {})  # per forward: what every layer's step shares
                out = dca_decode(query, key, value, g, rotary, view=view, scale=scaling, step=step)
                return out.transpose(1, 2).contiguous(), None
            kv_len = key.shape[2]
            padding = ctx.key_padding
            out = dca_attention(
                query,
                key,
                value,
                g,
                rotate,
                scale=scaling,
                q_pos=ctx.q_positions if padding is not None else None,
                k_pos=ctx.key_positions(kv_len) if padding is not None else None,
                key_padding=padding,
                backend=backend,
                inv_freq=inv_freq,
            )  # (B, H, T, D)
            return out.transpose(1, 2).contiguous(), None  # (B, T, H, D), as transformers expects

        return attention


class DCAStrategy(Strategy):
    """Dual Chunk Attention (An et al. 2024, arXiv 2402.17463): ~8x the pretraining context, no training.

    >>> from longctx_llm import Engine                                   # doctest: +SKIP
    >>> Engine("smollm2-135m-instruct", strategy={"name": "dca"}).context_window   # doctest: +SKIP
    65536
    """

    name = "dca"
    Options = DCAOptions
    capabilities = Capabilities(batching=True, cpu=True, rewind=True, save=True, unbounded=False)

    def __init__(self, options: Optional[DCAOptions] = None, **kwargs):
        try:
            super().__init__(options, **kwargs)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "strategy")) from e

    def sizes(self, info: hf_adapter.ModelInfo) -> Sizes:
        return resolve_sizes(self.options, info)

    def validate(self, info: hf_adapter.ModelInfo) -> None:
        hf_adapter.require_rope(info, self.name)
        self.sizes(info)

    def context_window(self, info: hf_adapter.ModelInfo) -> Optional[int]:
        return self.sizes(info).max_length

    def new_state(self, model, batch_size: int = 1) -> DCAState:
        self.validate(model.info)
        sizes = self.sizes(model.info)
        logger.debug("dca on %s: %s", model.source, sizes)
        return DCAState(model, batch_size, sizes, self.options)
