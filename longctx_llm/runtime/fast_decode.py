"""The CUDA fast path of a KV-cache state: fixed decode steps over a preallocated cache, replayed from CUDA graphs.

A one-token decode step over a :class:`~longctx_llm.kernels.kv_cache.StaticCache` writes one slot and attends through
a device-side valid length, so it is the same GPU program every time: :class:`FastDecode` replays such forwards
from CUDA graphs (:mod:`longctx_llm.kernels.cuda_graphs`), optionally through ``torch.compile``.
:class:`FastDecodeOptions` are the options of strategies that offer it and :func:`fast_decode_defaults` resolves
them (on exactly where CUDA is). :class:`FastDecode` is a part of :class:`~.kv_state.KVCacheState`; it reads the
state's ``cache``, ``padding``, ``model``, ``compile_steps`` and its seams ``attention`` / ``attention_extra``.
"""

from __future__ import annotations

import logging
from typing import ClassVar, Optional

import torch
from pydantic import Field

from ..kernels.cuda_graphs import GraphRunner
from ..kernels.cuda_graphs import available as cuda_available
from ..kernels.kv_cache import StaticCache
from ..model import hf_adapter
from .strategy import StrategyOptions

logger = logging.getLogger(__name__)


class FastDecodeOptions(StrategyOptions):
    """Options of strategies with a growing cache that decode through a
    :class:`~longctx_llm.kernels.kv_cache.StaticCache`."""

    speed_only: ClassVar[frozenset[str]] = frozenset({"static_cache", "cuda_graphs", "compile", "lookahead"})

    static_cache: Optional[bool] = Field(
        None,
        description="Preallocated key/value cache (a decode step writes one slot, copies nothing). "
        "Default: on with a CUDA device, off on CPU.",
    )
    cuda_graphs: Optional[bool] = Field(
        None, description="Replay decode steps from CUDA graphs (needs static_cache). Default: on with a CUDA device."
    )
    compile: bool = Field(
        False,
        description="torch.compile the graph-replayed decode step (fuses the model's small kernels; the first steps "
        "of a session wait for the compiler, a minute or more on an 8B model). Needs cuda_graphs.",
    )
    lookahead: Optional[bool] = Field(
        None,
        description="Queue each decode step before the host reads the token sampled last, so turning tokens into "
        "text (and the LangChain / LlamaIndex / server layers) overlaps the GPU's next step; the one token fed ahead "
        "is taken back when the reply ends. Needs static_cache. Default: on with CUDA graphs.",
    )


def cuda_graphs_available(model) -> bool:
    """Whether a loaded model (:class:`~longctx_llm.model.LoadedModel`) runs where CUDA graphs can replay."""
    return cuda_available(torch.device(model.device))


def fast_decode_defaults(model, static_cache: Optional[bool], cuda_graphs: Optional[bool]) -> tuple[bool, bool]:
    """Resolve a growing-cache strategy's ``static_cache`` / ``cuda_graphs`` options (None = on exactly on CUDA).

    A model split over several processes (tensor parallel) defaults to no CUDA graphs: its forwards hold NCCL
    collectives, which graphs replay only with care that has not been measured here (``cuda_graphs: true`` asks
    for them anyway)."""
    on_cuda = cuda_graphs_available(model)
    static = on_cuda if static_cache is None else bool(static_cache)
    alone = getattr(getattr(model, "info", None), "tp", 1) == 1
    graphs = (on_cuda and static and alone) if cuda_graphs is None else bool(cuda_graphs)
    return static, graphs


def _step(model, cache, attention, extra: dict, st: dict[str, torch.Tensor], keep: int, hooks=None) -> torch.Tensor:
    """One forward of a graph-replayed step, reading its inputs only from ``st`` (see :mod:`.cuda_graphs`)."""
    ctx = hf_adapter.AttentionContext(q_positions=st["q_positions"], attention=attention, extra=dict(extra))
    return hf_adapter.forward(model, st["input_ids"], position_ids=st["position_ids"], cache=cache, ctx=ctx,
                              logits_to_keep=keep, hooks=hooks)


_COMPILED_STEP = None


def _compiled_step():
    """:func:`_step` under ``torch.compile`` (made once per process; the compiler caches per shapes and guards)."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_step, dynamic=False)
    return _COMPILED_STEP


class FastDecode:
    """Which forwards are fixed steps (:meth:`_fixed_step`), which replay a graph (:meth:`graph_key`), and the
    replay itself (:meth:`_graphed_forward`)."""

    def graph_key(self, new_tokens: int, all_logits: bool) -> Optional[tuple]:
        """A key if this forward (planned already: called after ``logical_positions``) may replay a CUDA graph.

        Only for forwards that are the same GPU program every time (same shapes; every tensor read or written at a
        fixed address; no Python decision inside the forward that changes between calls): see
        :mod:`longctx_llm.kernels.cuda_graphs`. Default: a fixed decode step of a static cache (see
        :class:`~.kv_state.KVCacheState`).
        """
        return ("decode", all_logits) if self._fixed else None

    def _fixed_step(self, new_tokens: int, new_mask: Optional[torch.Tensor]) -> bool:
        """Whether this forward can be a fixed decode step: static cache, one real token per row, and padding (if
        any) a left prefix of every row (then ``_first`` says where each row's keys start)."""
        if not isinstance(self.cache, StaticCache) or new_tokens != 1 or new_mask is not None:
            return False
        if self.padding is None:
            return True
        if self._first is None:
            first = (self.padding.long().cumsum(-1) == 0).sum(-1)  # (B,) leading padding columns
            if int(self.padding.long().sum()) != int((self.padding.shape[1] - first).sum()):
                return False  # holes after the first real token: only the general (masked) path knows them
            self._first = first.to(torch.int32)
        return True

    def _graphed_forward(self, key, ids, rope, logical, all_logits: bool, hooks=None) -> torch.Tensor:
        runner = self._graphs
        generation = getattr(self.cache, "generation", 0)
        if runner is None or runner.owner is not self.cache or self._graph_generation != generation:
            # a new cache (restored session) or grown buffers: the captured kernels point at memory that is gone
            runner = self._graphs = GraphRunner(self.cache)
            self._graph_generation = generation
        attention, extra = self.attention(), self.attention_extra()
        if self._fixed:
            extra = {**extra, "decode": self.cache.view}
        model, cache = self.model.model, self.cache
        keep = 0 if all_logits else 1
        compiled = _compiled_step() if self.compile_steps and self._fixed and hooks is None else None

        def forward(st: dict[str, torch.Tensor]) -> torch.Tensor:
            if compiled is not None and self.compile_steps:
                try:
                    return compiled(model, cache, attention, extra, st, keep)
                except Exception as exc:  # a model or kernel the compiler cannot take: eager steps from now on
                    logger.warning("torch.compile of the decode step failed (%s: %s); running it uncompiled",
                                   type(exc).__name__, str(exc)[:500])
                    self.compile_steps = False
            return _step(model, cache, attention, extra, st, keep, hooks)

        return runner.run(key, {"input_ids": ids, "position_ids": rope, "q_positions": logical}, forward)
