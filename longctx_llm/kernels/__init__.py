"""The CUDA fast path of a forward, each piece beside the PyTorch code that is its reference.

- :mod:`.kv_cache`: :class:`StaticCache`, a preallocated key/value cache (a decode step writes one slot);
- :mod:`.decode_attention`: one new query per row against that cache (:func:`attend`; :func:`attend_reference`
  is the PyTorch reference), with the Triton kernel in :mod:`.triton_decode`;
- :mod:`.fused_norm`: :class:`FusedRMSNorm`, an RMSNorm that is one Triton kernel (:mod:`.triton_norm`) on CUDA;
- :mod:`.cuda_graphs`: :class:`GraphRunner`, replaying a forward from a CUDA graph when its shapes repeat.

May import: torch, Triton (lazily, only on a CUDA fast path: the ``triton_*`` modules are not imported here) and
:mod:`longctx_llm.errors`. Nothing else of the package: the model adapter and the strategies call these kernels,
never the other way round.
"""

from . import cuda_graphs, decode_attention, fused_norm, kv_cache
from .cuda_graphs import GraphRunner
from .decode_attention import attend, attend_reference
from .fused_norm import FusedRMSNorm
from .kv_cache import DecodeView, StaticCache

__all__ = [
    "DecodeView",
    "FusedRMSNorm",
    "GraphRunner",
    "StaticCache",
    "attend",
    "attend_reference",
    "cuda_graphs",
    "decode_attention",
    "fused_norm",
    "kv_cache",
]
