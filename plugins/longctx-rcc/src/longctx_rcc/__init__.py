"""Recurrent Context Compression (RCC, arXiv 2406.06110) for longctx-llm: the long prompt compressed 32x.

``strategy: {name: rcc, ratio: 32, window: 1024}`` in a pipeline. Complete windows of the prompt are encoded (in
batches) by a compressor; the hidden states at every ``ratio``-th position of every layer become slots that the
decoder (the unchanged model) reads in front of the recent text. See README.md.
"""

from .compressor import RCCCompressor
from .options import RCCOptions
from .strategy import RCCState, RCCStrategy

__all__ = ["RCCCompressor", "RCCOptions", "RCCState", "RCCStrategy"]
