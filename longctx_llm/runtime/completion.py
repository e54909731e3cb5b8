"""Stateless generation and scoring: plain-text prompts, token-id prompts, batches, per-token likelihoods.

:class:`Completions` is one part of :class:`~.engine.Engine` (with :class:`~.sessions.SessionStore` and
:class:`~.conversation.Conversations`). Every call here gets a fresh strategy state: nothing is kept between calls.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence, Union

import torch

from ..config import GenerationConfig
from ..errors import InputError
from .generation import Completion, Delta, generate, run_to_end
from .progress import progress_bar
from .stream import TextStream, out_of_memory


class Completions:
    """``complete``, ``complete_ids``, ``stream``, ``complete_batch``; ``score`` and ``perplexity``."""

    def _run(self, ids: list[int], params: GenerationConfig, state=None) -> Iterator[Delta]:
        loaded = self.loaded
        self.check_fits(len(ids))
        state = state or self.strategy.new_state(loaded, 1)
        gen = self._decode(state, ids, params, prompt_tokens=len(ids), keep_state=False)
        return out_of_memory(gen, loaded, len(ids))

    def _prompt_ids(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InputError("prompt: empty prompt; give some text")
        return self.tokenize(prompt)

    def complete(self, prompt: str, **gen: Any) -> Completion:
        """Continue a plain-text prompt (no chat template)."""
        params = self.params(**gen)
        return run_to_end(self._run(self._prompt_ids(prompt), params))[0]

    def complete_ids(self, ids: Sequence[int], **gen: Any) -> Completion:
        """Continue a prompt given as token ids (no chat template, no tokenisation round trip)."""
        ids = [int(t) for t in ids]
        if not ids:
            raise InputError("prompt: empty prompt (0 tokens); give some tokens")
        return run_to_end(self._run(ids, self.params(**gen)))[0]

    def stream(self, prompt: str, **gen: Any) -> TextStream:
        params = self.params(**gen)
        return TextStream(self._run(self._prompt_ids(prompt), params))

    def complete_batch(self, prompts: Sequence[str], **gen: Any) -> list[Completion]:
        """Several plain-text prompts in one left-padded batch (strategies with ``capabilities.batching``)."""
        if not prompts:
            return []
        if not self.strategy.capabilities.batching:
            return [self.complete(p, **gen) for p in prompts]
        params = self.params(**gen)
        rows = [self._prompt_ids(p) for p in prompts]
        for r in rows:
            self.check_fits(len(r))
        loaded = self.loaded
        width = max(len(r) for r in rows)
        pad = loaded.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=loaded.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=loaded.device)
        state = self.strategy.new_state(loaded, len(rows))
        gen_ = generate(state, loaded.tokenizer, ids, mask, params, loaded.eos_token_ids, window=self.context_window)
        return run_to_end(gen_)

    # ---- scoring ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, ids: Union[Sequence[int], torch.Tensor], *, chunk_size: int = 1024) -> torch.Tensor:
        """Per-token negative log-likelihoods (n-1,) of a token sequence under the active strategy.

        Fed in pieces of ``chunk_size`` tokens so memory stays bounded (logits are never held for the whole text).
        The strategy's window is not enforced here: measuring plain attention past its window is the point of
        perplexity benchmarks.
        """
        loaded = self.loaded
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        n = ids.numel()
        if n < 2:
            raise InputError(f"score: need at least 2 tokens, got {n}")
        state = self.strategy.new_state(loaded, 1)
        ids = ids.to(loaded.device)
        out = []
        with progress_bar(total=n - 1, desc="score", unit="tok", enabled=n - 1 > 2 * chunk_size) as bar:
            for start in range(0, n - 1, chunk_size):
                piece = ids[start : min(start + chunk_size, n - 1)]
                logits = state.forward(piece[None], all_logits=True)[0].float()  # (T, V)
                targets = ids[start + 1 : start + 1 + piece.numel()]
                out.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
                bar.update(piece.numel())
        return torch.cat(out).cpu()

    def perplexity(self, ids, **kwargs: Any) -> float:
        return math.exp(self.score(ids, **kwargs).mean().item())
