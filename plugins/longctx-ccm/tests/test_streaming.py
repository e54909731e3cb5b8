"""CCM under StreamingLLM: sinks + compressed slots + the recent window; exact against `full` while nothing is evicted."""

import pytest

from longctx_llm import Engine

from ccm_helpers import save_random_adapter

TURNS = ["My name is Ada.", "I live in Paris and I like long walks by the river.", "What is my name?", "And my city?"]


@pytest.mark.parametrize("layout", ["ring", "shift"])
def test_streaming_without_eviction_equals_full(tiny_model, tmp_path, layout):
    lm = tiny_model("llama", max_positions=512)
    d = save_random_adapter(lm, tmp_path / "a")
    mem = {"name": "ccm", "adapter": str(d), "comp_tokens": 2, "raw_tail": 0}  # (with a tail: the next test)
    full = Engine(lm, memory=mem, generation={"max_new_tokens": 8})
    stream = Engine(lm, strategy={"name": "streaming", "window": 400, "layout": layout}, memory=mem,
                    generation={"max_new_tokens": 8})
    for t in TURNS:
        assert stream.chat(t, session_id="s").token_ids == full.chat(t, session_id="s").token_ids
    assert stream.session("s").state.cache_tokens == full.session("s").state.seen == 8


@pytest.mark.parametrize("layout", ["ring", "shift"])
def test_streaming_evicts_the_oldest_slots_and_stays_bounded(tiny_model, tmp_path, layout):
    lm = tiny_model("llama", max_positions=512)
    d = save_random_adapter(lm, tmp_path / "a")
    e = Engine(lm, strategy={"name": "streaming", "sink_tokens": 2, "window": 48, "layout": layout},
               memory={"name": "ccm", "adapter": str(d), "comp_tokens": 4}, generation={"max_new_tokens": 6})
    for i in range(8):
        e.chat(TURNS[i % 4], session_id="s")
        s = e.session("s")
        assert s.state.cache_tokens <= 50
    assert s.memory.slots == 32  # every turn compressed; the oldest slots were evicted by the window
    assert s.state.cache_tokens <= 50


def test_streaming_compresses_a_whole_history_once(tiny_model, tmp_path):
    lm = tiny_model("llama", max_positions=512)
    d = save_random_adapter(lm, tmp_path / "a")
    e = Engine(lm, strategy={"name": "streaming", "window": 400}, memory={"name": "ccm", "adapter": str(d)},
               generation={"max_new_tokens": 5})
    history = [{"role": "user", "content": TURNS[0]}, {"role": "assistant", "content": "Hello Ada."},
               {"role": "user", "content": TURNS[1]}, {"role": "assistant", "content": "Nice."},
               {"role": "user", "content": TURNS[2]}]
    e.chat(history, session_id="s")
    s = e.session("s")
    assert s.memory.slots == 2  # one piece: the append-only cache cannot split it
    assert s.state.cache_tokens == 2 + 32 and s.cached_ids[2:] == s.memory.covered[-32:]  # the slots, the raw tail
    assert s.memory.covered == s.token_ids


@pytest.mark.parametrize("layout", ["ring", "shift"])
def test_streaming_keeps_the_raw_tail_behind_the_slots(tiny_model, tmp_path, layout):
    """An append-only cache cannot drop the old tail before the next turn is compressed: it compresses it with the
    turn, then the new tail follows the slots; nothing stale is ever read."""
    lm = tiny_model("llama", max_positions=512)
    d = save_random_adapter(lm, tmp_path / "a")
    e = Engine(lm, strategy={"name": "streaming", "window": 400, "layout": layout},
               memory={"name": "ccm", "adapter": str(d), "comp_tokens": 2, "raw_tail": 8},
               generation={"max_new_tokens": 6})
    for i, t in enumerate(TURNS):
        e.chat(t, session_id="s")
        s = e.session("s")
        assert s.memory.slots == 2 * (i + 1) and s.state.cache_tokens == 2 * (i + 1) + 8
        assert s.cached_ids[-8:] == s.memory.covered[-8:] == s.token_ids[-8:]
