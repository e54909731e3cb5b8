"""The strategy contract: how a prompt is laid into the model (cache, attention, positions).

A :class:`Strategy` is the configured plugin (one per pipeline); a :class:`StrategyState` is its per-sequence
state (one per session). The engine only ever calls ``StrategyState.forward`` (feed new tokens, get logits),
``rewind`` (drop cached tokens for prefix reuse) and ``state_dict``/``load_state_dict``; it never branches on a
strategy's name.

Most strategies are a KV cache plus a different choice at a few seams: :class:`~.kv_state.KVCacheState` implements
``forward`` once and lets a subclass override only the cache, the positions and the attention function; its
editing seam (:class:`~.kv_edits.KVCacheEdits`) is what memories that keep key/value slots use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import LongctxError, SessionError
from ..model import hf_adapter

if TYPE_CHECKING:
    from .row_pool import RowPool

@dataclass(frozen=True)
class Capabilities:
    """What a strategy supports; the engine and integrations read these instead of names."""

    batching: bool = True  # several rows with left padding in one forward
    cpu: bool = True
    rewind: bool = True  # can drop cached tokens past a length (prefix reuse across chat turns)
    save: bool = True  # state saves to / restores from disk
    unbounded: bool = False  # streams past its window by evicting (no prompt-length limit)
    compact: bool = False  # states offer compact_tail (a memory may replace a finished turn by key/value slots)
    splice: bool = False  # states offer kv_span / splice anywhere in the cache (e.g. CCM's merged memory)


class StrategyOptions(BaseModel):
    """Base of every strategy's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: options that change only how fast a state runs, never what it holds: left out of :meth:`Strategy.identity`,
    #: so a session saved with one setting restores under another
    speed_only: ClassVar[frozenset[str]] = frozenset()


class Strategy(ABC):
    """A long-prompt strategy plugin.

    Subclasses set ``name``, ``Options`` (a :class:`StrategyOptions` subclass) and ``capabilities``, and
    implement :meth:`context_window` and :meth:`new_state`. They are registered under the entry-point group
    ``longctx_llm.strategies``.
    """

    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, options: Optional[StrategyOptions] = None, **kwargs: Any):
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            raise TypeError("pass either an options object or keyword options, not both")
        self.options = options

    def validate(self, info: hf_adapter.ModelInfo) -> None:
        """Raise :class:`~longctx_llm.errors.ConfigError` or ``UnsupportedModelError`` if unusable on a model."""

    def prepare(self, model) -> None:
        """Load and check what the strategy needs on a loaded model (trained weights), before any state is made;
        errors here (a missing or mismatched compressor) reach the user before any work starts."""

    @abstractmethod
    def context_window(self, info: hf_adapter.ModelInfo) -> Optional[int]:
        """Tokens the model can attend to under this strategy (None: unbounded, e.g. streaming)."""

    def attention_span(self, info: hf_adapter.ModelInfo) -> int:
        """Tokens the model actually attends to at once: the window, or for unbounded strategies what they keep
        (streaming: sink + window). What prompt packers (LlamaIndex's PromptHelper) should plan with."""
        window = self.context_window(info)
        return int(window if window is not None else info.pretraining_length)

    def raw_tail(self) -> int:
        """Tokens before any token that this strategy always keeps as raw text where it otherwise compresses (RCC's
        ``raw_tail``; 0: none promised). What measures the compressed context alone (``eval recall``) reads past."""
        return 0

    @abstractmethod
    def new_state(self, model, batch_size: int = 1) -> "StrategyState":
        """A fresh per-sequence state for a loaded model (:class:`~longctx_llm.model.LoadedModel`)."""

    def row_pool(self, model) -> Optional["RowPool"]:
        """A pool of this strategy's own in which its sessions decode together under continuous batching (one
        forward for many replies), or None for the default: plain KV caches pool
        (:class:`~longctx_llm.runtime.batch_pool.KVPool`) when ``capabilities.batching``, else one forward per reply.
        A strategy with a cache of its own returns a :class:`~longctx_llm.runtime.row_pool.RowPool` of its own
        (StreamingLLM: a ring per row)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.model_dump()}

    def identity(self) -> dict[str, Any]:
        """:meth:`describe` without the speed-only options: what a saved session must match to be restored."""
        skip = type(self.options).speed_only
        return {k: v for k, v in self.describe().items() if k not in skip}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"


class StrategyState(ABC):
    """Per-sequence model-side state of a strategy."""

    #: tokens fed so far (columns, padding included)
    seen: int = 0

    @property
    def cache_entries(self) -> int:
        """Positions the model attends to now (a cache that evicts or compresses holds fewer than it was fed); what
        ``longctx eval gap`` compares a compressing pipeline against (the same number of raw tokens)."""
        return self.seen

    @abstractmethod
    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *, all_logits: bool = False
    ) -> torch.Tensor:
        """Feed new tokens (B, T); return logits (B, T, V) if ``all_logits`` else (B, 1, V) for the last one."""

    def rewind(self, length: int) -> None:
        raise LongctxError(f"{type(self).__name__} cannot rewind its cache")

    def reserve(self, tokens: int) -> None:
        """A hint that the sequence will hold ``tokens`` tokens (prompt + reply); states that preallocate use it."""

    #: the generation loop may feed a sampled token before the host reads it (overlapping the host's per-token work
    #: with the GPU's next step) and rewind that one token when the reply ends: for states whose one-token rewind is
    #: cheap and exact (see :func:`longctx_llm.runtime.generation._step_ahead`)
    lookahead: bool = False

    #: whether memories may edit the cache (:meth:`~.kv_edits.KVCacheEdits.compact_tail` and friends)
    editable: bool = False

    #: None when a prompt fed in pieces of any length leaves the state it leaves fed at once; else N: it does so
    #: only for pieces that start at multiples of N tokens from the prompt's start (a state that evicts between its
    #: own pieces of N, as StreamingLLM's window). The batch scheduler cuts prompts accordingly.
    prefill_align: Optional[int] = None

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise SessionError(f"{type(self).__name__} does not support saving")

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise SessionError(f"{type(self).__name__} does not support restoring")
