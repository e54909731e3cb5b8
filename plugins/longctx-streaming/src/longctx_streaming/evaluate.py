"""Long-input evaluation: stream a whole text through the engine and read per-segment perplexity.

The Python face of ``longctx eval stream``: per-token negative log-likelihoods come from ``Engine.score`` (fed in
pieces, so memory stays bounded by the strategy's cache), and the segmenting is ``longctx eval stream``'s own
function (:func:`longctx_llm.eval.segment_perplexity`), so both report the same numbers.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from longctx_llm.errors import InputError
from longctx_llm.eval import segment_perplexity

__all__ = ["segment_perplexity", "stream_nll"]


def stream_nll(engine, ids: Union[Sequence[int], torch.Tensor], *, chunk_size: int = 4096) -> torch.Tensor:
    """(n-1,) per-token NLL of ``ids`` streamed through ``engine``'s strategy (the whole text, one pass)."""
    if chunk_size <= 0:
        raise InputError(f"chunk_size: must be > 0, got {chunk_size}")
    return engine.score(ids, chunk_size=chunk_size)
