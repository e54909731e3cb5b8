"""Options of the ``ccm`` memory."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from longctx_llm import MemoryOptions


class CCMOptions(MemoryOptions):
    mode: Literal["concat", "merge"] = Field(
        "concat",
        description="concat: each turn adds comp_tokens slots; merge: a running mean keeps comp_tokens slots in all.",
    )
    comp_tokens: int = Field(
        2, gt=0, le=64, description="Key/value slots per compressed turn (the adapter must have been trained for it)."
    )
    adapter: Optional[str] = Field(
        None,
        description="Adapter directory (longctx train ccm output, or the reference's released LoRA + COMP "
        "embeddings); default: the adapter shipped for the embedded model.",
    )
    raw_tail: int = Field(
        32, ge=0, le=4096,
        description="The last tokens of the compressed turns stay in the cache as raw text behind the slots, so the "
        "next turn reads the end of the last one word for word (0: slots alone).",
    )
    max_slots: Optional[int] = Field(
        None, gt=0, description="concat: keep at most this many slots, dropping the oldest turns' (default: all)."
    )
