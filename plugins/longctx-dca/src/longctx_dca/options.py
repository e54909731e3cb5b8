"""DCA's options: sizes in tokens, each defaulting to the paper's choice derived from the pretraining length L.

Validated twice: without the model when the pipeline is parsed (types, signs, local_window < chunk_size when both
are given), and against the model in :meth:`DCAStrategy.validate` (chunk_size < L, RoPE architecture).
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from longctx_llm.runtime import FastDecodeOptions

BACKENDS = ("auto", "math", "cpu_flash", "cuda_flash", "cuda_cudnn", "cuda_efficient", "flash_attn")


class DCAOptions(FastDecodeOptions):
    chunk_size: Optional[int] = Field(
        None,
        gt=0,
        description="Largest relative distance the model sees (s + w); must be < the pretraining length L. "
        "Default 3L/4 (DCA §4.1).",
    )
    local_window: Optional[int] = Field(
        None,
        gt=0,
        description="Keys near a chunk boundary that keep exact distances (w); must be < chunk_size. Default L/8.",
    )
    max_length: Optional[int] = Field(
        None, gt=0, description="Context window reported to the engine and integrations. Default 8L."
    )
    pretraining_length: Optional[int] = Field(
        None, gt=0, description="L; default: the model config's max_position_embeddings."
    )
    temperature_scaling: bool = Field(
        False, description="Scale logits by (0.1 ln(n/L) + 1)^p past L (YaRN-style, DCA §3.3); off by default."
    )
    temperature_power: float = Field(
        2.0,
        gt=0,
        description="p of temperature_scaling: 2 as in YaRN and the DCA reference (queries and keys scaled), 1 as in "
        "vLLM's DCA for Qwen2.5-1M (keys only).",
    )
    temperature_parts: Literal["all", "earlier"] = Field(
        "all",
        description="Which logits temperature_scaling scales: all (the reference), or earlier: only those of keys in "
        "earlier chunks (successive and inter parts), leaving the intra-chunk attention as the model was trained. "
        "Measured on SmolLM2: better passkey retrieval, worse perplexity past 4L (benchmarks/RESULTS.md, round 7).",
    )
    prefill_chunk_size: Optional[int] = Field(
        None, gt=0, description="Tokens per forward during prefill (bounds memory). Default: the chunk length s."
    )
    backend: Literal[BACKENDS] = Field(  # type: ignore[valid-type]
        "auto", description="Partial-attention kernel; auto picks the fastest usable one on the device."
    )

    @model_validator(mode="after")
    def _window_inside_chunk(self) -> "DCAOptions":
        if self.chunk_size is not None and self.local_window is not None and self.local_window >= self.chunk_size:
            raise ValueError(
                f"local_window must be smaller than chunk_size, got local_window={self.local_window} >= "
                f"chunk_size={self.chunk_size} (valid: 0 < local_window < chunk_size)"
            )
        return self
