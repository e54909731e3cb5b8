"""``ccm``: Compressed Context Memory (ICLR'24, REFERENCE §3) as a longctx-llm memory.

Layout of a session's cache: ``[slots of earlier turns][raw tail][the current turn's tokens]``. When a turn ends,
``k`` COMP tokens are fed after it with the conditional LoRA on (their embeddings are the adapter's), then the turn's
entries are removed and the COMP entries move back to where the turn began (``compact_tail``): the turn becomes ``k``
slots. The turn is compressed on its own, right after the earlier slots (as in training); then the last
``raw_tail`` tokens of the compressed text are fed again behind the slots, so the next turn reads the end of the
last one as text (an append-only streaming cache, which cannot drop the old tail first, compresses it with the
turn).

Positions (why they differ from the reference): the reference keeps text positions "as if the full context were
present", so a long chat walks past the model's trained length (SmolLM2: 8k positions after ~50 turns of 160
tokens). Here the slots sit at cache positions ``0..M-1`` and the current turn follows at ``M``: the COMP tokens are
computed right after their turn (as in the reference) and their keys are re-rotated to their slot positions when the
turn is removed, so a 100-turn chat uses ~200 + one turn of positions. Training (``parallel.py``) uses exactly this
layout, so the adapter is trained for it.

- concat: memory grows by ``k`` slots per turn (``max_slots`` drops the oldest turns' slots).
- merge: one set of ``k`` slots, the running mean ``m_t = (1 - 1/t) m_{t-1} + (1/t) c_t`` of every turn's COMP
  keys/values re-rotated to positions ``0..k-1``.

Under ``streaming`` the cache is sinks + slots + the recent window, and evicting old entries evicts the oldest slots
first (the reference's streaming variant: sink + FIFO of compressed slots + recent window).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Optional

import torch

from longctx_llm.errors import AdapterError, ConfigError, LongctxError, SessionError, UnsupportedModelError
from longctx_llm.runtime import SLOT, Memory, MemoryState, Message
from longctx_llm.runtime import templates as chat_mod

from .adapter import CCMAdapter, find_shipped
from .options import CCMOptions

logger = logging.getLogger(__name__)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class CCMState(MemoryState):
    """One session's compressed memory: which tokens the slots stand for, and how many slots there are."""

    wants_token_ids = True

    def __init__(self, adapter: CCMAdapter, options: CCMOptions, model):
        self.adapter = adapter
        self.options = options
        self.model = model  # LoadedModel
        self.reset()

    def reset(self) -> None:
        self.covered: list[int] = []  # rendered token ids the slots stand for (a prefix of the conversation)
        self.slots = 0  # slot placeholders at the head of the session's token list
        self.turns = 0  # compressed turns (merge: the running mean's count)

    # ---- what the model sees -------------------------------------------------------------------------------
    def view(self, history: list[Message]) -> list[Message]:
        return list(history)  # rendered whole; token_view swaps the compressed prefix for slots

    def token_view(self, ids: list[int]) -> Optional[list[int]]:
        n = len(self.covered)
        if ids[:n] != self.covered:
            return None
        return [SLOT] * self.slots + self._tail() + list(ids[n:])

    def _tail(self) -> list[int]:
        """The last ``raw_tail`` tokens of the compressed text, kept raw behind the slots."""
        t = min(self.options.raw_tail, len(self.covered)) if self.slots else 0
        return list(self.covered[len(self.covered) - t :]) if t else []

    # ---- compression at the end of a turn ----------------------------------------------------------------
    def on_turn_end(self, history: list[Message], session: Any) -> None:
        ids = list(session.turn_ids)
        if ids[: len(self.covered)] != self.covered:
            # the engine resets a memory whose prefix no longer matches before the turn runs, so this is not
            # reached through it; leave the cache as it is rather than compress the wrong text
            logger.warning("ccm: the finished conversation does not extend the compressed one; not compressing")
            return
        unit = ids[len(self.covered):]
        if not unit:
            return
        pieces = self._pieces(history, ids) or [len(unit)]
        state = session.state
        start = len(self.covered)
        for n in pieces:
            exact = self._bring(session, ids[start : start + n])
            self._compress(session)
            if not exact:  # an append-only cache: what it held was compressed as one piece, whatever it covered
                self.covered = ids
                break
            self.covered = ids[: start + n]
            start += n
        tail = self._tail()
        if tail:  # the end of the compressed text, raw again behind the slots
            state.forward(torch.tensor([tail], dtype=torch.long, device=self.model.device))
            session.cached_ids.extend(tail)
        logger.debug("ccm: %d slots after %d turns; cache holds %d entries", self.slots, self.turns, state.seen)

    def _pieces(self, history: list[Message], ids: list[int]) -> list[int]:
        """Token lengths of the finished turns not yet compressed, when several are (a history given at once)."""
        if sum(1 for m in history if m.get("role") == "assistant") <= 1:
            return []
        tok = self.model.tokenizer
        base = len(self.covered)
        cuts = []
        for j, m in enumerate(history):
            if m.get("role") != "assistant":
                continue
            try:
                text = chat_mod.render(tok, history[: j + 1], add_generation_prompt=False)
            except Exception:  # noqa: BLE001 - a template that cannot render a prefix: compress as one piece
                return []
            n = len(tok(text, add_special_tokens=False)["input_ids"])
            if n > base and n <= len(ids) and ids[:n] == list(tok(text, add_special_tokens=False)["input_ids"]):
                cuts.append(n)
        if not cuts or cuts[-1] != len(ids):
            cuts.append(len(ids))
        lengths, prev = [], base
        for c in sorted(set(cuts)):
            if c > prev:
                lengths.append(c - prev)
                prev = c
        return lengths

    def _bring(self, session: Any, piece: list[int]) -> bool:
        """Make the cache hold ``[slots][piece]`` (feeding or dropping what differs); False when an append-only
        cache holds more or other tokens than ``piece`` and cannot drop them."""
        state = session.state
        cached = session.cached_ids
        tail = cached[self.slots :]
        common = _common(tail, piece)
        if common < len(tail):
            try:
                state.rewind(self.slots + common)
            except LongctxError:
                # an append-only cache (streaming) holding the reply as generated, which re-tokenised differently,
                # or several turns at once: compress what the model saw; the slots stand for the same text
                return False
            del cached[self.slots + common :]
        rest = piece[common:]
        if rest:
            state.forward(torch.tensor([rest], dtype=torch.long, device=self.model.device))
            cached.extend(rest)
        return True

    @torch.inference_mode()
    def _compress(self, session: Any) -> None:
        state, k = session.state, self.options.comp_tokens
        n = len(session.cached_ids) - self.slots  # the turn's entries
        if n <= 0:
            return
        emb = self.adapter.embeddings(k, self.model.dtype)[None].to(self.model.device)  # (1, k, H)
        state.forward(None, inputs_embeds=emb, hooks=self.adapter.hooks(None))
        self.turns += 1
        if self.options.mode == "concat":
            state.compact_tail(drop=n, keep=k)
            self.slots += k
            limit = self.options.max_slots
            if limit is not None and self.slots > limit:
                excess = -(-(self.slots - limit) // k) * k  # whole turns
                state.splice(0, excess, [])
                self.slots -= excess
        else:
            total = state.seen
            comp = state.rotate_keys(state.kv_span(total - k, total), -(total - k))  # to positions 0..k-1
            if self.slots:
                mem = state.kv_span(0, k)
                w = 1.0 / self.turns
                comp = [
                    ((1 - w) * mk.float() + w * ck.float(), (1 - w) * mv.float() + w * cv.float())
                    for (mk, mv), (ck, cv) in zip(mem, comp)
                ]
            state.splice(0, total, comp)
            self.slots = k
        session.cached_ids = [SLOT] * self.slots

    # ---- saving ----------------------------------------------------------------------------------------------
    def state_dict(self):
        return {}, {"covered": self.covered, "slots": self.slots, "turns": self.turns}

    def load_state_dict(self, tensors, meta):
        try:
            self.covered = [int(t) for t in meta["covered"]]
            self.slots, self.turns = int(meta["slots"]), int(meta["turns"])
        except (KeyError, TypeError, ValueError) as e:
            raise SessionError(f"saved ccm memory is malformed: {e}") from e


class CCMMemory(Memory):
    """Past turns compressed into ``comp_tokens`` key/value slots each (concat) or in all (merge).

    >>> from longctx_llm import Engine                                                     # doctest: +SKIP
    >>> engine = Engine(memory={"name": "ccm", "mode": "concat", "comp_tokens": 2})     # doctest: +SKIP
    """

    name = "ccm"
    Options = CCMOptions

    def __init__(self, options: Optional[CCMOptions] = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        self._adapters: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def adapter_for(self, model) -> CCMAdapter:
        """Load (once per loaded model) and check the adapter for a LoadedModel."""
        with self._lock:
            got = self._adapters.get(id(model))
            if got is not None and got[0]() is model:
                return got[1]
            fp = model.fingerprint
            path = self.options.adapter or find_shipped(fp)
            if path is None:
                raise AdapterError(
                    f"memory ccm: no trained CCM adapter ships for model {model.source!r}; train one with "
                    "`longctx train ccm --model ... --out DIR` and set memory.adapter: DIR (an untrained adapter "
                    "makes answers worse, so none is used by default)"
                )
            from .reference import is_reference_layout, load_reference

            if is_reference_layout(path):
                adapter = load_reference(path, model.model)
            else:
                adapter = CCMAdapter.load(path, model.model, fp)
            adapter.check_usable(self.options.mode, self.options.comp_tokens, repr(str(path)))
            adapter = adapter.to(device=model.device, dtype=model.dtype).eval()
            adapter.requires_grad_(False)
            self._adapters[id(model)] = (weakref.ref(model), adapter)  # an id is reused after its model is freed
            return adapter

    def validate(self, strategy, model) -> None:
        self.check_strategy(strategy)
        info = model.info
        if not info.has_rope:
            raise UnsupportedModelError(
                f"memory ccm needs a rotary-position model (slots are re-rotated); model_type {info.model_type!r} has none"
            )
        self.adapter_for(model)

    def check_strategy(self, strategy) -> None:
        caps = strategy.capabilities
        need = "compact" if self.options.mode == "concat" else "splice"
        if not getattr(caps, need, False):
            raise ConfigError(
                f"memory ccm (mode {self.options.mode}) cannot run with strategy {strategy.name!r}: its cache cannot "
                f"be edited ({need}); use strategy full"
                + (" or streaming" if self.options.mode == "concat" else "")
            )
        if self.options.max_slots is not None and not caps.splice:
            raise ConfigError(
                f"memory.max_slots needs a strategy whose cache can drop slots anywhere (full); {strategy.name!r} "
                "evicts the oldest entries itself"
            )

    def raw_tail(self) -> int:
        return self.options.raw_tail

    def new_state(self, model) -> CCMState:
        return CCMState(self.adapter_for(model), self.options, model)
