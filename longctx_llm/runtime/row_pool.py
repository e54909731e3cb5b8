"""What continuous batching drives: sessions decoding as the rows of one forward (see ``batch_pool.py`` for the
plain KV caches' pool and the streaming plugin's ``pool.py`` for a pool of rings)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class RowPool(ABC):
    """Sessions decoding as the rows of one forward: what the continuous-batching scheduler drives.

    A row joins with its session's state (batch 1) between steps, feeds one token per :meth:`step` beside the
    others, and leaves with what it gained written back to that state, so that the session goes on exactly as if
    it had decoded alone.
    """

    def __init__(self) -> None:
        self.owners: list[Any] = []  # in row order

    def __len__(self) -> int:
        return len(self.owners)

    def row(self, owner: Any) -> int:
        return next(i for i, o in enumerate(self.owners) if o is owner)

    @abstractmethod
    def accepts(self, state) -> bool:
        """Whether ``state`` (a session's, batch 1) can decode its next token as a row of this pool. Asked again of
        a row in the pool before every step: False makes it leave (its state brought up to date) and feed that
        token alone (RCC: a token that starts a window compresses the last one first)."""

    @abstractmethod
    def join(self, owner: Any, state) -> None:
        """Add ``state``'s sequence as a new row (the state itself is left as it was)."""

    @abstractmethod
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per row (in row order); return the next logits (rows, V)."""

    @abstractmethod
    def leave(self, owner: Any, state, gained: int, keep: bool) -> None:
        """Remove ``owner``'s row; with ``keep``, bring ``state`` to where the row is (its ``gained`` tokens fed)."""
