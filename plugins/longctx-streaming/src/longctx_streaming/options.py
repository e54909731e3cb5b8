"""Options of the ``streaming`` strategy (StreamingLLM, arXiv 2309.17453)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from longctx_llm import StrategyOptions

#: default prefill piece, at most half the window so that the first query of a piece still sees half a window of
#: context. 1024 (the prototype had 512): on an H200, `longctx eval stream` of SmolLM2 over 1M tokens with the default
#: window of 2048 runs 154.7k tokens/s at perplexity 7.81 with pieces of 1024, against 89.2k at 7.70 with 512
#: (benchmarks/RESULTS.md, 2026-12-01): fewer, larger pieces amortise each replayed graph's launch.
DEFAULT_PIECE = 1024


class StreamingOptions(StrategyOptions):
    sink_tokens: int = Field(
        4, ge=0, description="Initial tokens kept forever as attention sinks (paper §3.2: 4 suffice; 0 = plain window)."
    )
    window: int = Field(2048, gt=0, description="Most recent tokens kept besides the sinks (must exceed sink_tokens).")
    layout: Literal["ring", "shift"] = Field(
        "ring",
        description="ring: nothing moves on eviction (fastest alone); shift: text order at cache-local positions, "
        "re-rotated on eviction, so another strategy's positions and attention can run inside "
        "(strategy: [{name: streaming, layout: shift, window: 16384}, {name: dca}]).",
    )
    prefill_chunk_size: Optional[int] = Field(
        None,
        gt=0,
        description="Tokens fed per forward while streaming a long input (at most window); "
        f"default: min({DEFAULT_PIECE}, window // 2).",
    )

    cuda_graphs: bool = Field(
        True,
        description="On a CUDA device, replay full-cache forwards (one-token decode and whole prefill pieces) from "
        "CUDA graphs instead of launching every kernel from Python (ring layout; ignored on CPU).",
    )

    @model_validator(mode="after")
    def _sizes(self) -> "StreamingOptions":
        if self.window <= self.sink_tokens:
            raise ValueError(
                f"window ({self.window}) must be greater than sink_tokens ({self.sink_tokens}); "
                f"valid: window > sink_tokens >= 0"
            )
        if self.prefill_chunk_size is not None and self.prefill_chunk_size > self.window:
            raise ValueError(
                f"prefill_chunk_size ({self.prefill_chunk_size}) must not exceed window ({self.window}); "
                f"valid: 1..{self.window}"
            )
        return self

    @property
    def piece(self) -> int:
        return self.prefill_chunk_size or max(1, min(DEFAULT_PIECE, self.window // 2))
