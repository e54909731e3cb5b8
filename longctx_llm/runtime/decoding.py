"""How a reply runs: through the batch scheduler (concurrent replies share forwards), or on its own.

:class:`Decoding` is one part of :class:`~.engine.Engine`: every chat and completion hands its prepared state and
prompt tokens to :meth:`Decoding._decode`. With ``batching.max_batch`` above 1 (the default, 16) the reply goes to
the engine's :class:`~.batching.Scheduler`; with 1 it runs in the caller's thread through
:func:`~.generation.generate`, as it did before the scheduler existed. A model split over several processes
(``model.tp`` > 1) decodes one reply at a time: its processes replay rank 0's engine calls in order
(:mod:`.tensor_parallel`), which a scheduler thread running forwards of its own would break.
"""

from __future__ import annotations

import logging
from typing import Iterator, Optional

import torch

from ..config import BatchingConfig, GenerationConfig
from .batching import Scheduler
from .generation import Delta, generate

logger = logging.getLogger(__name__)


class Decoding:
    """The engine's scheduler (made on first use) and the one call every reply goes through."""

    batching: BatchingConfig
    _scheduler: Optional[Scheduler] = None

    @property
    def scheduler(self) -> Optional[Scheduler]:
        """The batch scheduler (None when ``batching.max_batch`` is 1 or the model is tensor parallel)."""
        if self.batching.max_batch <= 1:
            return None
        if getattr(self.model_handle, "tp", 1) > 1:
            if not getattr(self, "_said_serial", False):
                self._said_serial = True
                logger.info("batching: off under model.tp: %d (replies run one at a time)", self.model_handle.tp)
            return None
        if self._scheduler is None:
            self._scheduler = Scheduler(self.strategy, self.loaded, self.batching)
        return self._scheduler

    def refuse_when_full(self) -> None:
        """Requests beyond ``max_batch + max_queue`` get a :class:`~longctx_llm.errors.BusyError` at once instead of
        waiting for room (``batching.when_full: refuse``): a server's back-pressure (503 + Retry-After)."""
        self.batching = self.batching.model_copy(update={"when_full": "refuse"})
        if self._scheduler is not None:
            self._scheduler.options = self.batching

    def _decode(self, state, feed: list[int], params: GenerationConfig, *, prompt_tokens: int,
                fed_tokens: Optional[list[int]] = None, keep_state: bool = True) -> Iterator[Delta]:
        """Prefill ``feed`` into ``state`` and decode a reply; yields text deltas, returns ``[Completion]``."""
        loaded = self.loaded
        scheduler = self.scheduler
        if scheduler is not None:
            return scheduler.submit(
                state, feed, params, tokenizer=loaded.tokenizer, eos_token_ids=loaded.eos_token_ids,
                window=self.context_window, prompt_tokens=prompt_tokens, fed_tokens=fed_tokens, keep_state=keep_state,
            )
        tensor = torch.tensor([feed], dtype=torch.long, device=loaded.device)
        return generate(
            state, loaded.tokenizer, tensor, None, params, loaded.eos_token_ids, window=self.context_window,
            fed_tokens=[fed_tokens] if fed_tokens is not None else None, prompt_tokens=[prompt_tokens],
        )
