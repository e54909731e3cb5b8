"""``buffer``: a plain text memory that shows the model the conversation so far (optionally the last N turns)."""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from ..runtime import Memory, MemoryOptions, MemoryState, Message


class BufferOptions(MemoryOptions):
    max_turns: Optional[int] = Field(
        None, gt=0, description="Keep only the last N user turns (system messages always stay); default: all."
    )


class BufferState(MemoryState):
    def __init__(self, max_turns: Optional[int]):
        self.max_turns = max_turns

    def view(self, history: list[Message]) -> list[Message]:
        if self.max_turns is None:
            return list(history)
        system = [m for m in history if m.get("role") == "system"]
        rest = [m for m in history if m.get("role") != "system"]
        user_idx = [i for i, m in enumerate(rest) if m.get("role") == "user"]
        if len(user_idx) > self.max_turns:
            rest = rest[user_idx[-self.max_turns]:]
        return system + rest


class BufferMemory(Memory):
    """Keeps the text of past turns; the strategy's cache reuse makes each turn feed only its new tokens."""

    name = "buffer"
    Options = BufferOptions

    def new_state(self, model) -> BufferState:
        return BufferState(self.options.max_turns)
