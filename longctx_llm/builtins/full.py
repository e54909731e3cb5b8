"""``full``: plain causal attention over a growing KV cache, the baseline every benchmark compares against."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from ..runtime import Capabilities, FastDecodeOptions, KVCacheState, Strategy, fast_decode_defaults


class FullOptions(FastDecodeOptions):
    max_length: Optional[int] = Field(
        None, gt=0, description="Context window in tokens; default: the model's pretraining length."
    )
    prefill_chunk_size: int = Field(2048, gt=0, description="Tokens per forward during prefill (bounds memory).")


class FullStrategy(Strategy):
    """Plain attention: the model as trained, window = its pretraining length."""

    name = "full"
    Options = FullOptions
    capabilities = Capabilities(compact=True, splice=True)

    def context_window(self, info) -> Optional[int]:
        return self.options.max_length or info.pretraining_length or None

    def new_state(self, model, batch_size: int = 1) -> KVCacheState:
        static, graphs = fast_decode_defaults(model, self.options.static_cache, self.options.cuda_graphs)
        return KVCacheState(
            model, batch_size, prefill_chunk_size=self.options.prefill_chunk_size,
            static_cache=static, cuda_graphs=graphs, compile_steps=self.options.compile,
            lookahead=self.options.lookahead,
        )
