"""Options of the ``rcc`` strategy."""

from __future__ import annotations

from typing import Optional

from pydantic import Field, model_validator

from longctx_llm.runtime import FastDecodeOptions


class RCCOptions(FastDecodeOptions):
    """``static_cache`` / ``cuda_graphs`` / ``compile`` (from :class:`FastDecodeOptions`) apply to the decoder's cache:
    on CUDA its decode steps, reader LoRA included, replay from CUDA graphs."""

    ratio: int = Field(32, gt=0, description="Compression ratio: a window of W tokens becomes W / ratio slots.")
    window: int = Field(
        1024, gt=0, description="Tokens per encoded window (at most the compressor's trained window; ratio divides it)."
    )
    compressor: Optional[str] = Field(
        None,
        description="Compressor directory (longctx train rcc output, or the official RCC_Ins_Reconstruction "
        "checkpoint); default: the compressor shipped for the embedded model.",
    )
    raw_tail: int = Field(
        32, ge=0,
        description="The most recent tokens always stay raw text: a window is compressed only once this many tokens "
        "follow it (0: as soon as the next window starts, so the token after a window boundary reads slots alone).",
    )
    encode_batch: int = Field(8, gt=0, description="Windows encoded per encoder forward.")
    prefill_chunk_size: int = Field(2048, gt=0, description="Tokens per decoder forward (bounds activation memory).")

    @model_validator(mode="after")
    def _divides(self) -> "RCCOptions":
        if self.window % self.ratio:
            raise ValueError(
                f"ratio must divide window: window {self.window} is not a multiple of ratio {self.ratio} "
                f"(valid windows: multiples of {self.ratio})"
            )
        if self.window < self.ratio:
            raise ValueError(f"window {self.window} must be at least ratio {self.ratio}")
        return self
