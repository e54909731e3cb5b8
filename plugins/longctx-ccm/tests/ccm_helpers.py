"""Helpers of the CCM tests: a tiny model with a random (non-zero) adapter, and the turn-by-turn inference path."""

from __future__ import annotations

import torch

from longctx_llm import KVCacheState
from longctx_llm.runtime import SLOT
from longctx_ccm.adapter import CCMAdapter
from longctx_ccm.memory import CCMState
from longctx_ccm.options import CCMOptions


def random_adapter(loaded, n_comp=4, rank=4, seed=0, **kw) -> CCMAdapter:
    torch.manual_seed(seed)
    a = CCMAdapter(loaded.model, n_comp=n_comp, rank=rank, alpha=8.0, **kw)
    with torch.no_grad():
        for p in a.lora.b.values():
            p.normal_(0, 0.2)  # an untrained LoRA is the identity; make it act
        a.comp_embeddings.normal_(0, 1.0)
    return a.eval()


class FakeSession:
    """What CCMState touches of an engine session: its strategy state and token bookkeeping."""

    def __init__(self, state):
        self.state = state
        self.cached_ids: list[int] = []
        self.turn_ids: list[int] = []
        self.history: list = []


def run_turns(loaded, adapter, segments: list[list[int]], k: int, mode: str = "concat"):
    """Feed segments 0..N-2 as turns (each compressed), then segment N-1; return (session, logits of the last)."""
    state = KVCacheState(loaded, 1)
    memory = CCMState(adapter, CCMOptions(mode=mode, comp_tokens=k, raw_tail=0), loaded)
    session = FakeSession(state)
    full: list[int] = []
    for seg in segments[:-1]:
        full = full + seg
        view = memory.token_view(full)
        state.forward(torch.tensor([view[len(session.cached_ids):]]))
        session.cached_ids = list(view)
        session.turn_ids = list(full)
        memory.on_turn_end([], session)
        assert session.cached_ids == [SLOT] * memory.slots
    logits = state.forward(torch.tensor([segments[-1]]), all_logits=True)[0]
    return session, memory, logits


def save_random_adapter(loaded, path, *, modes=("concat", "merge"), comp_tokens=(1, 2, 4), **kw):
    """A random adapter for a tiny model, saved where ``memory.adapter`` can point (no base hash: in-memory model)."""
    from longctx_llm.model import adapters as files

    a = random_adapter(loaded, modes=modes, comp_tokens=comp_tokens, **kw)
    card = {"base_model": {"name": "tiny", **files.model_facts(loaded.model)}, "training": {"steps": 0}}
    a.save(path, card, dtype=torch.float32)
    return path
