"""The memory contract: what a session keeps of its past turns.

A :class:`Memory` is the configured plugin; a :class:`MemoryState` lives in one session. The engine asks the
state which messages the model should see for the next turn (:meth:`MemoryState.view`), how the rendered tokens map
onto the session's cache (:meth:`MemoryState.token_view`), and tells it when a turn ends
(:meth:`MemoryState.on_turn_end`).

A text memory returns (a window of) the history and leaves the tokens alone. A compressed memory (CCM) keeps past
turns as key/value slots inside the session's cache: its ``token_view`` replaces the turns it compressed by one
:data:`SLOT` placeholder per slot, so the engine's prefix matching feeds only what is new, and at the end of a turn
it edits the cache through the strategy state's editing seam
(:meth:`~longctx_llm.runtime.kv_edits.KVCacheEdits.compact_tail`).
Registered under the entry-point group ``longctx_llm.memories``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict

Message = dict[str, Any]

#: placeholder in a session's token list for a cache entry that is a memory slot, not a token (never a real id)
SLOT = -1


class MemoryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemoryState(ABC):
    #: set by memories that need the token ids of each finished conversation (``session.turn_ids``)
    wants_token_ids: ClassVar[bool] = False

    @abstractmethod
    def view(self, history: list[Message]) -> list[Message]:
        """The messages the model should see as text for the next turn (history ends with the new turn)."""

    def token_view(self, ids: list[int]) -> Optional[list[int]]:
        """What the session's cache should hold for the rendered conversation ``ids``.

        Text memories return ``ids``. A memory holding slots returns ``ids`` with the part it compressed replaced by
        :data:`SLOT` placeholders (one per slot), or None when ``ids`` no longer starts with what it compressed (the
        client edited the history): the engine then calls :meth:`reset` and feeds ``ids`` whole.
        """
        return ids

    def reset(self) -> None:
        """Forget everything (the session's cache is rebuilt from text)."""

    def on_turn_end(self, history: list[Message], session: Any) -> None:
        """Called after each completed turn with the full history (assistant reply included)."""

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass


class Memory(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[MemoryOptions]] = MemoryOptions

    def __init__(self, options: Optional[MemoryOptions] = None, **kwargs: Any):
        self.options = options if options is not None else self.Options(**kwargs)

    def check_strategy(self, strategy: Any) -> None:
        """Raise a :class:`~longctx_llm.errors.LongctxError` if this memory cannot run with ``strategy`` on any model
        (e.g. it edits a cache the strategy cannot edit). Needs no model: ``longctx validate`` calls it."""

    def validate(self, strategy: Any, model: Any) -> None:
        """Raise a :class:`~longctx_llm.errors.LongctxError` if this memory cannot run with ``strategy`` on ``model``
        (a LoadedModel), before any session is made; memories that load weights check them here. Memories that
        override it call :meth:`check_strategy` first."""
        self.check_strategy(strategy)

    @abstractmethod
    def new_state(self, model: Any) -> MemoryState:
        """A fresh per-session state (``model`` is the LoadedModel, for memories that need it)."""

    def raw_tail(self) -> int:
        """Tokens at the end of the compressed turns that this memory keeps as raw text (CCM's ``raw_tail``; 0:
        none). What measures the compressed context alone (``eval recall``) keeps its spans out of."""
        return 0

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.model_dump()}
