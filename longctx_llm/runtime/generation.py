"""The generation loop the project owns: prefill, then decode against the strategy's state.

``model.generate`` cannot host the strategies' caches and positions, so the loop is ours: small pure pieces
(:func:`sample`, :class:`StopMatcher`, :class:`IncrementalDecoder`) and one loop, :func:`generate`, that yields
text deltas per row and returns the finished :class:`Completion` objects.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from ..config import GenerationConfig
from .strategy import StrategyState


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length" (max_new_tokens or window)
    token_ids: list[int] = field(default_factory=list)
    stop_reason: Optional[str] = None  # the stop string that matched, if any
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# ---- sampling ---------------------------------------------------------------------------------------------------


def sample(logits: torch.Tensor, params: GenerationConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Next token per row from logits (B, V): greedy when temperature == 0, else temperature/top-k/top-p."""
    if params.temperature == 0.0:
        return logits.argmax(dim=-1)
    logits = logits.float() / params.temperature
    if params.top_k > 0:
        k = min(params.top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= params.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ---- text: UTF-8-clean incremental decoding and stop strings ------------------------------------------------------


class IncrementalDecoder:
    """Turns a growing token list into text deltas, never splitting a multi-byte character.

    Decodes a short window of tokens (prefix + new) so the cost per token is constant, and withholds output that
    ends in U+FFFD (an incomplete UTF-8 sequence) until the next token completes it.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still withheld at the end (an incomplete character decodes as U+FFFD)."""
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]


class StopMatcher:
    """Finds stop strings across token boundaries; holds back text that could be the start of one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.emitted = 0
        self.matched: Optional[str] = None

    def push(self, delta: str) -> str:
        """Add new text; return the part that is safe to emit now. Sets ``matched`` when a stop string is hit."""
        self.text += delta
        if not self.stops:
            out, self.emitted = self.text[self.emitted :], len(self.text)
            return out
        search_from = max(0, self.emitted - self.longest)
        hit = None
        for s in self.stops:
            i = self.text.find(s, search_from)
            if i >= 0 and (hit is None or i < hit[0]):
                hit = (i, s)
        if hit is not None:
            self.matched = hit[1]
            self.text = self.text[: hit[0]]
            out = self.text[self.emitted :]
            self.emitted = len(self.text)
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        safe = len(self.text) - hold
        out = self.text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def flush(self) -> str:
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out


# ---- one reply ----------------------------------------------------------------------------------------------


class RowDecoder:
    """One reply being decoded: tokens in, text deltas out (UTF-8-clean, stop strings held back), until EOS, a stop
    string or the end; then its :class:`Completion`. The generation loop keeps one per row, the batch scheduler one
    per request."""

    def __init__(self, tokenizer, params: GenerationConfig, eos_token_ids: frozenset[int]):
        self.decoder = IncrementalDecoder(tokenizer)
        self.matcher = StopMatcher(params.stop)
        self.eos = eos_token_ids
        self.generated: list[int] = []
        self.finish: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.finish is not None

    def push(self, token: int) -> str:
        """Take the next sampled token; return the text that may go out now."""
        if self.finish is not None:
            return ""
        self.generated.append(token)
        if token in self.eos:
            self.finish = "stop"
            return ""
        out = self.matcher.push(self.decoder.push(token))
        if self.matcher.matched is not None:
            self.finish = "stop"
        return out

    def close(self) -> str:
        """The reply ends: the text still held back (a possible stop string, an incomplete character)."""
        if self.finish is None:
            self.finish = "length"
        tail = ""
        if self.matcher.matched is None:  # release text held back for a possible stop string or UTF-8 tail
            tail = self.matcher.push(self.decoder.flush())
            if self.matcher.matched is None:
                tail += self.matcher.flush()
            if self.matcher.matched is not None:
                self.finish = "stop"
        return tail

    def completion(self, prompt_tokens: int, prefill_seconds: float, decode_seconds: float) -> Completion:
        return Completion(
            text=self.matcher.text, prompt_tokens=int(prompt_tokens), completion_tokens=len(self.generated),
            finish_reason=self.finish or "length", token_ids=self.generated, stop_reason=self.matcher.matched,
            prefill_seconds=prefill_seconds, decode_seconds=decode_seconds,
        )


# ---- the loop ---------------------------------------------------------------------------------------------------


@dataclass
class Delta:
    row: int
    text: str


def make_generator(params: GenerationConfig, device) -> Optional[torch.Generator]:
    """The sampling generator of a reply (None: greedy, or sampling from the global RNG when no seed is given)."""
    if params.temperature > 0 and params.seed is not None:
        return torch.Generator(device=device).manual_seed(params.seed)
    return None


def generate(
    state: StrategyState,
    tokenizer,
    prompt_ids: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    params: GenerationConfig,
    eos_token_ids: frozenset[int],
    *,
    window: Optional[int] = None,
    fed_tokens: Optional[list[list[int]]] = None,
    prompt_tokens: Optional[list[int]] = None,
) -> Iterator[Delta]:
    """Prefill ``prompt_ids`` (B, T) into ``state`` and decode; yields text deltas; returns completions.

    Use as ``completions = yield from generate(...)``, or drive it with :func:`run_to_end`.
    ``window`` (the strategy's context window) ends generation with finish_reason "length" when the cache is
    full. ``fed_tokens`` (one list per row), if given, receives every token fed to the model, so a session knows
    exactly what its cache holds. ``prompt_tokens`` overrides the reported prompt token counts (sessions report
    the whole prompt, not just the part that was fed).
    """
    B = prompt_ids.shape[0]
    device = state.model.device if hasattr(state, "model") else prompt_ids.device
    generator = make_generator(params, device)
    if prompt_tokens is None:
        if attention_mask is None:
            prompt_tokens = [prompt_ids.shape[1]] * B
        else:
            prompt_tokens = attention_mask.long().sum(-1).tolist()

    t0 = time.perf_counter()
    need = state.seen + prompt_ids.shape[1] + params.max_new_tokens  # reply included: decode never allocates
    state.reserve(min(need, window) if window is not None else need)
    logits = state.forward(prompt_ids, attention_mask)[:, -1, :]
    t1 = time.perf_counter()

    rows = [RowDecoder(tokenizer, params, eos_token_ids) for _ in range(B)]
    lookahead = bool(getattr(state, "lookahead", False))
    for step in range(params.max_new_tokens):
        next_tokens = sample(logits, params, generator)  # (B,)
        more = step < params.max_new_tokens - 1 and not (window is not None and state.seen + 1 > window)
        ahead = None
        if lookahead and more and step:  # queue the next step before the host sees this token (see _step_ahead);
            # not for the first token: its text goes out first (the first decode step runs eagerly, a slow launch)
            tokens, ahead = _step_ahead(state, next_tokens)
            if fed_tokens is not None:
                for r in range(B):
                    fed_tokens[r].append(tokens[r])
        else:
            tokens = next_tokens.tolist()
        for r, row in enumerate(rows):
            out = row.push(tokens[r])
            if out:
                yield Delta(r, out)
        if all(row.done for row in rows):
            if ahead is not None:  # the step queued ahead fed a token no row wants: take it back
                state.rewind(state.seen - 1)
                if fed_tokens is not None:
                    for r in range(B):
                        fed_tokens[r].pop()
            break
        if not more:
            break
        if ahead is not None:
            logits = ahead
            continue
        logits = state.forward(next_tokens[:, None])[:, -1, :]  # every row's new token is real: no mask
        if fed_tokens is not None:
            for r in range(B):
                fed_tokens[r].append(tokens[r])
    t2 = time.perf_counter()

    completions = []
    for r, row in enumerate(rows):
        tail = row.close()
        if tail:
            yield Delta(r, tail)
        completions.append(row.completion(prompt_tokens[r], t1 - t0, t2 - t1))
    return completions


def _step_ahead(state: StrategyState, next_tokens: torch.Tensor) -> tuple[list[int], torch.Tensor]:
    """Feed ``next_tokens`` (B,) before the host reads them: (their values, the next logits (B, V)).

    On a GPU the token ids go to pinned host memory behind an event, then the next forward is queued, and only that
    event is waited for: the host turns this token into text (and the caller's layers consume it) while the GPU
    runs the next step. Every token is fed as it would be without this; if the reply then ends, the caller rewinds
    the one token fed ahead (a stream closed by its reader keeps it: the session's cache and token record still
    agree, and the next turn rewinds to what it needs). Used when ``state.lookahead`` is true: by default the CUDA
    fast path of :class:`~longctx_llm.runtime.kv_state.KVCacheState` (a one-token rewind is a length change there)
    and RCC over it.
    """
    if next_tokens.is_cuda:
        host = torch.empty(next_tokens.shape, dtype=next_tokens.dtype, pin_memory=True)
        with torch.cuda.device(next_tokens.device):  # the copy's stream, also for a model on cuda:1
            host.copy_(next_tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        logits = state.forward(next_tokens[:, None])[:, -1, :]
        ready.synchronize()
        return host.tolist(), logits
    logits = state.forward(next_tokens[:, None])[:, -1, :]
    return next_tokens.tolist(), logits


def run_to_end(gen: Iterator[Delta]) -> list[Completion]:
    """Drain a :func:`generate` iterator and return its completions."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
