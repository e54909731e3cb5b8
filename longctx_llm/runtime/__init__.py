"""The runtime: what turns a prompt into tokens under a strategy and a memory.

- :mod:`.engine`: :class:`Engine`, the one object every face of the package (CLI, LangChain, LlamaIndex, the
  server) drives; :mod:`.session` its sessions and their files;
- :mod:`.generation`: the generation loop (sampling, stop strings, streaming deltas, :class:`Completion`);
- :mod:`.strategy`: the strategy contract (:class:`Strategy`, :class:`StrategyState`, :class:`Capabilities`);
  :mod:`.kv_state`: :class:`KVCacheState`, the KV-cache state most strategies extend (its forward and seams), with
  :mod:`.kv_edits` (rewind, the memories' editing seam, save/load) and :mod:`.fast_decode` (fixed decode steps
  replayed from CUDA graphs); :mod:`.compose` stacks two strategies;
- :mod:`.memory`: the memory contract (:class:`Memory`, :class:`MemoryState`);
- :mod:`.templates`: chat messages and the tokenizer's chat template;
- :mod:`.restore`: checks every strategy's ``load_state_dict`` applies to an untrusted saved state;
- :mod:`.tensor_parallel`: the processes of a ``model.tp`` run under ``torchrun -m longctx_llm.cli`` kept in step
  (rank 0 sends each model-running engine call to the others, which run it on engines of their own);
- :mod:`.aio`: running the engine's blocking calls from asyncio; :mod:`.progress`: progress bars.

May import: torch, pydantic, :mod:`longctx_llm.errors`, :mod:`longctx_llm.config`, :mod:`longctx_llm.registry`,
:mod:`longctx_llm.model` and :mod:`longctx_llm.kernels`. Never chat/, eval/, train/, the CLI or anything that is
not the core: strategies and memories plug in by name through the registry, the engine never imports one.
"""

from . import aio, restore, session, templates, tensor_parallel
from .batch_pool import KVPool
from .compose import StackedStrategy
from .engine import Engine
from .fast_decode import FastDecodeOptions, fast_decode_defaults
from .generation import Completion, Delta, generate, run_to_end
from .kv_state import KVCacheState
from .memory import SLOT, Memory, MemoryOptions, MemoryState, Message
from .progress import progress_bar
from .row_pool import RowPool
from .session import Session
from .strategy import Capabilities, Strategy, StrategyOptions, StrategyState
from .stream import TextStream

__all__ = [
    "SLOT",
    "Capabilities",
    "Completion",
    "Delta",
    "Engine",
    "FastDecodeOptions",
    "KVCacheState",
    "KVPool",
    "Memory",
    "MemoryOptions",
    "MemoryState",
    "Message",
    "RowPool",
    "Session",
    "StackedStrategy",
    "Strategy",
    "StrategyOptions",
    "StrategyState",
    "TextStream",
    "aio",
    "fast_decode_defaults",
    "generate",
    "progress_bar",
    "restore",
    "run_to_end",
    "session",
    "templates",
    "tensor_parallel",
]
