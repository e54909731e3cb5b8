"""Replaying forwards from CUDA graphs (full-cache steps and pieces, one-token steps into a filling cache) gives what
eager forwards give.

On CPU the graph is emulated (``conftest.py``): "capture" records the tensor ops of one forward, "replay" runs those
ops again with none of the forward's Python, so per-step Python state that a real graph would freeze, a per-call
tensor instead of a fixed buffer, or a host sync inside the forward shows up as a mismatch or a failed capture. On a
CUDA machine the real graphs are checked too.
"""

from __future__ import annotations

import pytest
import torch

from longctx_llm.runtime import KVCacheState
from longctx_streaming import StreamingStrategy


def _stream(model, ids, graphs: bool, piece: int, decode: int):
    strat = StreamingStrategy(sink_tokens=4, window=24, prefill_chunk_size=piece, cuda_graphs=graphs)
    state = strat.new_state(model)
    logits = [state.forward(ids[:, i : i + piece], all_logits=True)[0] for i in range(0, ids.shape[1], piece)]
    tok = ids[:, :1]
    for _ in range(decode):  # one-token decode against the full cache
        logits.append(state.forward(tok)[0])
        tok = logits[-1][-1:].argmax(-1)[None]
    return torch.cat(logits), state


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_emulated_replay_equals_eager(tiny_model, emulated, arch):
    model = tiny_model(arch, max_positions=256)
    ids = torch.randint(0, 49152, (1, 160), generator=torch.Generator().manual_seed(3))
    eager, _ = _stream(model, ids, graphs=False, piece=8, decode=12)
    graphed, state = _stream(model, ids, graphs=True, piece=8, decode=12)
    assert state.cuda_graphs and state._graphs.captured == 2  # pieces (all logits) and one-token decode
    assert state.cache.evicted > 3 * state.cache.window  # replays went through ring wrap-arounds and rebases
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_decode_into_a_filling_cache_replays_and_equals_eager(tiny_model, emulated, arch):
    """A chat shorter than the window decodes through a graph too: each step attends the whole buffer, the slots
    not yet filled masked, and equals the eager step over the filled slots, on into the first evictions."""
    model = tiny_model(arch, max_positions=256)
    ids = torch.randint(0, 49152, (1, 10), generator=torch.Generator().manual_seed(8))  # sinks 4 + window 24 = 28
    eager, _ = _stream(model, ids, graphs=False, piece=8, decode=30)
    graphed, state = _stream(model, ids, graphs=True, piece=8, decode=30)
    assert ("fill", False) in state._graphs._graphs  # the decode steps before the first eviction replayed
    assert ("ring", 1, False) in state._graphs._graphs and state.cache.evicted > 0  # and the full-cache ones after
    torch.testing.assert_close(graphed, eager, rtol=1e-5, atol=1e-5)


def test_a_filling_step_masks_what_the_cache_does_not_hold(tiny_model, emulated):
    model = tiny_model("llama", max_positions=256)
    state = StreamingStrategy(sink_tokens=4, window=24, prefill_chunk_size=8).new_state(model)
    state.forward(torch.randint(3, 200, (1, 2)))  # inside the sinks: eager, no mask
    assert state.cache._plan.valid is None
    state.forward(torch.randint(3, 200, (1, 6)))  # a piece: eager
    state.cache.plan(1)
    assert state.graph_key(1, all_logits=False) == ("fill", False)
    assert state.cache._plan.valid[0, 0, 0].tolist() == [True] * 9 + [False] * 19  # 8 held + the new one


def test_graph_key_only_for_full_cache_fixed_shapes(tiny_model, emulated):
    model = tiny_model("llama", max_positions=256)
    state = StreamingStrategy(sink_tokens=4, window=24, prefill_chunk_size=8).new_state(model)
    keys = []
    for n in (8, 8, 8, 8, 5, 8, 1):
        state.cache.plan(n)
        keys.append(state.graph_key(n, all_logits=True))
        state.cache._plan = None
        state.cache.filled = state.cache.filled  # bookkeeping only: no forward
    assert keys[:3] == [None, None, None]  # filling up: the cache is not full yet
    assert keys[3] == ("ring", 8, True) and keys[4] is None  # a remainder piece stays eager
    assert keys[5] == ("ring", 8, True) and keys[6] == ("ring", 1, True)


def test_shift_layout_and_option_off_stay_eager(tiny_model, emulated):
    model = tiny_model("llama", max_positions=256)
    assert not StreamingStrategy(window=24, layout="shift").new_state(model).cuda_graphs
    assert not StreamingStrategy(window=24, cuda_graphs=False).new_state(model).cuda_graphs
    assert StreamingStrategy(window=24).new_state(model).cuda_graphs


def test_cpu_never_uses_graphs(tiny_model):
    model = tiny_model("llama", max_positions=256)
    assert not StreamingStrategy(window=24).new_state(model).cuda_graphs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt_neox"])
def test_real_cuda_graphs_equal_eager(tiny_model, arch):
    model = tiny_model(arch, max_positions=256, device="cuda")
    ids = torch.randint(0, 49152, (1, 400), generator=torch.Generator().manual_seed(4)).cuda()
    eager, _ = _stream(model, ids, graphs=False, piece=16, decode=20)
    graphed, state = _stream(model, ids, graphs=True, piece=16, decode=20)
    assert state._graphs.enabled and state._graphs.captured == 2
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_graphs_of_a_filling_cache_equal_eager(tiny_model):
    model = tiny_model("llama", max_positions=256, device="cuda")
    ids = torch.randint(0, 49152, (1, 10), generator=torch.Generator().manual_seed(9)).cuda()
    eager, _ = _stream(model, ids, graphs=False, piece=8, decode=30)
    graphed, state = _stream(model, ids, graphs=True, piece=8, decode=30)
    assert ("fill", False) in state._graphs._graphs
    torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)


def test_sessions_in_threads_share_the_model_one_forward_at_a_time(tiny_model, emulated, monkeypatch):
    """Forwards of states on one model are serialised (a capture must not see another thread's kernels)."""
    import threading

    model = tiny_model("llama", max_positions=256)
    ids = [torch.randint(0, 49152, (1, 120), generator=torch.Generator().manual_seed(s)) for s in (5, 6)]
    alone = [_stream(model, x, graphs=True, piece=8, decode=6)[0] for x in ids]
    active, overlaps = [0], [0]
    forward = KVCacheState._chunk_locked

    def watched(self, *a, **kw):
        active[0] += 1
        overlaps[0] = max(overlaps[0], active[0])
        try:
            return forward(self, *a, **kw)
        finally:
            active[0] -= 1

    monkeypatch.setattr(KVCacheState, "_chunk_locked", watched)
    results = [None, None]
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _stream(model, ids[i], True, 8, 6)[0]))
               for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 1
    for got, want in zip(results, alone):
        torch.testing.assert_close(got, want)
