"""StreamingLLM attention sinks for longctx-llm: an endless session with a fixed-size KV cache."""

from .cache import SinkWindowCache
from .evaluate import segment_perplexity, stream_nll
from .options import StreamingOptions
from .strategy import StreamingState, StreamingStrategy

__all__ = [
    "SinkWindowCache",
    "StreamingOptions",
    "StreamingState",
    "StreamingStrategy",
    "segment_perplexity",
    "stream_nll",
]
