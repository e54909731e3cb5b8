"""The memory contract: what a session keeps of its past turns.

A :class:`Memory` is the configured plugin; a :class:`MemoryState` lives in one session. The engine asks the
state which messages the model should see for the next turn (:meth:`MemoryState.view`) and tells it when a turn
ends (:meth:`MemoryState.on_turn_end`). A text memory returns (a window of) the history; a compressed memory
(CCM) returns only the new turn and contributes key/values through :meth:`MemoryState.kv_prefix` instead.
Registered under the entry-point group ``longctx_llm.memories``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict

Message = dict[str, Any]


class MemoryOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MemoryState(ABC):
    @abstractmethod
    def view(self, history: list[Message]) -> list[Message]:
        """The messages the model should see as text for the next turn (history ends with the new turn)."""

    def on_turn_end(self, history: list[Message], session: Any) -> None:
        """Called after each completed turn with the full history (assistant reply included)."""

    def kv_prefix(self, model: Any) -> Optional[Any]:
        """Key/values to place before the text (compressed memories); None for text memories."""
        return None

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {}, {}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass


class Memory(ABC):
    name: ClassVar[str]
    Options: ClassVar[type[MemoryOptions]] = MemoryOptions

    def __init__(self, options: Optional[MemoryOptions] = None, **kwargs: Any):
        self.options = options if options is not None else self.Options(**kwargs)

    @abstractmethod
    def new_state(self, model: Any) -> MemoryState:
        """A fresh per-session state (``model`` is the LoadedModel, for memories that need it)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.model_dump()}
