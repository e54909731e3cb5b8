"""The model: finding and loading it, and everything that touches transformers' modules.

- :mod:`.loading`: model sources (aliases of embedded models, HF folders, GGUF files de-quantised once into a cache),
  :class:`ModelHandle` (loaded lazily, shared per process) and :class:`LoadedModel` (model, tokenizer, facts);
- :mod:`.hf_adapter`: the one adapter to transformers' modules: attention registration, RoPE (:class:`Rotary`), the
  cache API, per-call forward hooks, :class:`ModelInfo`, tensor parallelism's seams;
- :mod:`.parallel`: the processes of a tensor-parallel run (``model.tp`` under torchrun): which one this is, their
  process group, and the checks ``tp`` passes before a model loads;
- :mod:`.lora`: :class:`LoRA` projections applied through forward hooks (no module patching);
- :mod:`.adapters`: trained adapter folders (``adapter.json`` card + safetensors) written and checked on load.

May import: torch, transformers, safetensors, gguf, :mod:`longctx_llm.errors` and :mod:`longctx_llm.kernels`. Never
the runtime (strategies, engine, sessions) above it: a strategy uses the model, not the other way round.
"""

from . import adapters, hf_adapter, loading, lora, parallel
from .hf_adapter import ForwardHooks, ModelInfo, Rotary
from .loading import (
    DEFAULT_MODEL,
    DTYPES,
    LoadedModel,
    ModelHandle,
    cache_entries,
    cache_root,
    clear_cache,
    load_model,
    resolve_source,
    wrap_model,
)
from .lora import LoRA

__all__ = [
    "DEFAULT_MODEL",
    "DTYPES",
    "ForwardHooks",
    "LoRA",
    "LoadedModel",
    "ModelHandle",
    "ModelInfo",
    "Rotary",
    "adapters",
    "cache_entries",
    "cache_root",
    "clear_cache",
    "hf_adapter",
    "load_model",
    "loading",
    "lora",
    "parallel",
    "resolve_source",
    "wrap_model",
]
