"""Correctness against references: plain cache before eviction, dense cache-local reference after it."""

import pytest
import torch

from helpers import dense_reference_logits
from longctx_llm import Engine, KVCacheState
from longctx_streaming import StreamingStrategy

ARCHS = ("llama", "qwen2", "gpt_neox")


@pytest.mark.parametrize("arch", ARCHS)
def test_before_first_eviction_equals_plain_cache(tiny_model, arch):
    model = tiny_model(arch, max_positions=256)
    ids = torch.randint(0, 49152, (1, 60), generator=torch.Generator().manual_seed(0))
    plain = KVCacheState(model, 1, prefill_chunk_size=16).forward(ids, all_logits=True)
    state = StreamingStrategy(sink_tokens=4, window=60, prefill_chunk_size=16).new_state(model)
    ours = state.forward(ids, all_logits=True)
    assert state.cache.evicted == 0 and state.cache_tokens == 60
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_before_eviction_is_token_for_token_full(tiny_model, arch):
    model = tiny_model(arch, max_positions=256)
    prompt = "The quick brown fox jumps over the lazy dog. " * 3
    full = Engine(model, strategy="full").complete(prompt, max_new_tokens=24)
    n_prompt = len(model.tokenizer(prompt)["input_ids"])
    streaming = Engine(model, strategy={"name": "streaming", "sink_tokens": 4, "window": n_prompt + 24})
    out = streaming.complete(prompt, max_new_tokens=24)
    assert out.token_ids == full.token_ids


CASES = [("llama", 4, 12, 4), ("qwen2", 4, 12, 4), ("gpt_neox", 4, 12, 4), ("llama", 0, 10, 3), ("qwen2", 2, 10, 10)]


@pytest.mark.parametrize("arch, sink, window, piece", CASES)
def test_after_eviction_equals_dense_reference_at_cache_positions(tiny_model, arch, sink, window, piece):
    model = tiny_model(arch, num_hidden_layers=1, max_positions=256)
    ids = torch.randint(0, 49152, (60,), generator=torch.Generator().manual_seed(1)).tolist()
    state = StreamingStrategy(sink_tokens=sink, window=window, prefill_chunk_size=piece).new_state(model)
    ours = state.forward(torch.tensor([ids]), all_logits=True)[0]
    assert state.cache.evicted == 60 - sink - window
    assert state.cache.evicted > 2 * window  # several ring wrap-arounds and rebases happened
    ref = dense_reference_logits(model, ids, sink, window, piece)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_after_eviction_equals_dense_reference(tiny_model, arch):
    """One token per forward (the decode path): each sees the sinks and the window - 1 latest tokens."""
    model = tiny_model(arch, num_hidden_layers=1, max_positions=256)
    ids = torch.randint(0, 49152, (40,), generator=torch.Generator().manual_seed(2)).tolist()
    state = StreamingStrategy(sink_tokens=4, window=10, prefill_chunk_size=8).new_state(model)
    got = [state.forward(torch.tensor([[t]]))[0, -1] for t in ids]
    assert state.cache.base > 0 and state.cache.evicted == 26
    ref = dense_reference_logits(model, ids, 4, 10, 1)
    torch.testing.assert_close(torch.stack(got), ref, rtol=1e-4, atol=1e-4)


def test_cache_never_exceeds_sink_plus_window(tiny_model):
    model = tiny_model("qwen2")
    state = StreamingStrategy(sink_tokens=4, window=32, prefill_chunk_size=16).new_state(model)
    ids = torch.randint(0, 49152, (1, 50), generator=torch.Generator().manual_seed(3))
    for _ in range(6):
        state.forward(ids)  # a long input streams through in pieces
        assert state.cache_tokens <= 36
        assert all(k.shape[2] == 36 for k in state.cache.keys)  # preallocated once, written in place
    assert state.seen == 300 and state.cache.evicted == 300 - 36


def test_ring_positions_follow_text_order(tiny_model):
    """The slot order of the ring lists sinks, then kept tokens oldest to newest."""
    model = tiny_model("llama")
    state = StreamingStrategy(sink_tokens=2, window=6, prefill_chunk_size=3).new_state(model)
    state.forward(torch.arange(100, 111)[None])  # 11 tokens: keep 0,1 and the last 6
    order = state.cache.slot_order().tolist()
    assert order[:2] == [0, 1] and sorted(order[2:]) == list(range(2, 8)) and len(order) == 8
    assert state.cache.evicted == 3
