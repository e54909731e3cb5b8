"""RCC sessions decoding as the rows of one forward (continuous batching, issue 24).

While a reply is decoded, an RCC state only feeds its decoder: a plain KV cache holding the slots of the compressed
windows and the current window's raw tokens. The rows' decoders therefore pool as any plain cache does
(:class:`~longctx_llm.runtime.KVPool`), with one difference: text read after slots goes through the compressor's
reader LoRA, so the step applies it on the rows that hold slots only (bit for bit the others' plain forward). A
token that completes a window's raw tail must compress that window first: :meth:`RCCPool.accepts` says no, the
scheduler lets that row leave and feed the token alone (the state compresses as it always does), and the row joins
again at the next step.
"""

from __future__ import annotations

from typing import Any

import torch

from longctx_llm import Capabilities, KVCacheState, RowPool
from longctx_llm.runtime import KVPool


class _Decoders:
    """What :class:`KVPool` needs of a strategy: plain batched KV-cache states (the decoders' rows)."""

    name = "rcc-decoder"
    capabilities = Capabilities()

    @staticmethod
    def new_state(model, batch_size: int = 1) -> KVCacheState:
        return KVCacheState(model, batch_size)


class RCCPool(RowPool):
    """RCC sessions decoding together: their decoders as rows of one plain KV pool, slots and all."""

    def __init__(self, strategy, loaded, state_type: type):
        super().__init__()
        self.strategy, self.loaded = strategy, loaded
        self.state_type = state_type  # the strategy's state class (its rows are exactly those)
        self.decoders = KVPool(_Decoders(), loaded, buckets=False)  # its steps carry per-row hooks
        self.states: list[Any] = []  # the rows' RCC states
        self.fed: list[list[int]] = []  # per row, the tokens fed since it joined
        self._compressor = None  # the strategy's, whose reader LoRA every row reads

    def accepts(self, state) -> bool:
        if type(state) is not self.state_type or not self.decoders.accepts(state.decoder):
            return False
        if self._compressor is None:  # (asked for every row at every step: looked up once)
            self._compressor = self.strategy.compressor_for(self.loaded)
        if state.compressor is not self._compressor:
            return False  # one forward reads one compressor's reader LoRA
        fed = next((f for s, f in zip(self.states, self.fed) if s is state), [])
        return state.windows_for(state.seen + len(fed)) <= state.windows  # the next token compresses no window

    def join(self, owner: Any, state) -> None:
        self.decoders.join(owner, state.decoder)
        self.owners.append(owner)
        self.states.append(state)
        self.fed.append([])

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        reader = self._compressor.reader_lora
        hooks = None
        with_slots = [s.windows > 0 for s in self.states]
        if reader is not None and any(with_slots):
            rows = None if all(with_slots) else torch.tensor(with_slots, device=self.loaded.device)
            hooks = reader.hooks(rows=rows)
        logits = self.decoders.step(tokens, hooks=hooks)
        for fed, tok in zip(self.fed, tokens):
            fed.append(tok)
        return logits

    @torch.inference_mode()
    def leave(self, owner: Any, state, gained: int, keep: bool) -> None:
        r = self.row(owner)
        fed = self.fed[r]
        try:
            self.decoders.leave(owner, state.decoder, len(fed), keep)
        finally:  # the row is gone from the decoders' pool whatever happened after: gone from here too
            del self.owners[r], self.states[r], self.fed[r]
        if keep:
            state.text.extend(fed)
            state.seen += len(fed)
