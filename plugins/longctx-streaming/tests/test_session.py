"""Multi-turn sessions: append-only cache kept between turns, bounded size, save / restore / continue."""

import pytest
import torch

from longctx_llm import Engine

STRATEGY = {"name": "streaming", "sink_tokens": 4, "window": 48, "prefill_chunk_size": 16}


def test_session_cache_stays_bounded_over_many_turns(tiny_model):
    engine = Engine(tiny_model("llama"), strategy=STRATEGY)
    sizes, fed = [], []
    for turn in range(8):
        session = engine.session("s")
        before = len(session.cached_ids)
        engine.chat(f"Turn {turn}: tell me something about the number {turn}.", "s", max_new_tokens=6)
        fed.append(len(session.cached_ids) - before)
        sizes.append(session.state.cache_tokens)
    assert max(sizes) <= 52 and sizes[-1] == 52  # sink + window, reached and never exceeded
    assert session.state.cache.evicted > 0
    total = len(engine.render_chat(session.history, add_generation_prompt=False))
    assert sum(fed) < 3 * total  # each turn fed only its new tokens, not the whole history again


def test_save_restore_continue_equals_continue(tiny_model, tmp_path):
    model = tiny_model("qwen2")
    engine = Engine(model, strategy=STRATEGY)
    for turn in range(3):
        engine.chat(f"Question {turn}: what comes after {turn}?", "a", max_new_tokens=8)
    assert engine.session("a").state.cache.evicted > 0
    engine.save_session("a", tmp_path / "saved")

    restored = Engine(model, strategy=STRATEGY)
    restored.load_session(tmp_path / "saved")
    expected = engine.chat("And what comes after that?", "a", max_new_tokens=12)
    got = restored.chat("And what comes after that?", "a", max_new_tokens=12)
    assert got.token_ids == expected.token_ids
    a, b = engine.session("a").state, restored.session("a").state
    assert a.cache.meta() == b.cache.meta()
    torch.testing.assert_close(a.cache.keys[0], b.cache.keys[0])


def test_restore_into_a_smaller_cache_is_refused(tiny_model, tmp_path):
    from longctx_llm.errors import SessionError

    model = tiny_model("llama")
    engine = Engine(model, strategy=STRATEGY)
    engine.chat("Hello there, how are you today?", "a", max_new_tokens=4)
    tensors, meta = engine.session("a").state.state_dict()
    small = Engine(model, strategy={**STRATEGY, "window": 8, "prefill_chunk_size": 4}).session("b").state
    with pytest.raises(SessionError, match="keeps 12"):
        small.load_state_dict(tensors, meta)


@pytest.mark.integration
def test_smollm_multi_turn_stays_coherent_with_a_bounded_cache(smollm):
    engine = Engine(smollm, strategy={"name": "streaming", "sink_tokens": 4, "window": 124})
    filler = [
        "Tell me one fact about the ocean.",
        "Name a colour of the rainbow.",
        "What do bees make?",
    ]
    for text in filler:
        engine.chat(text, "s", max_new_tokens=24)
    state = engine.session("s").state
    assert state.cache.evicted > 0 and state.cache_tokens == 128
    answer = engine.chat("What is the capital of France?", "s", max_new_tokens=24)
    assert "Paris" in answer.text
    assert state.cache_tokens == 128


def test_compact_tail_outside_inference_mode(tiny_model):
    import torch as _torch

    from longctx_llm import Engine as _Engine

    e = _Engine(tiny_model("llama", max_positions=512), strategy={"name": "streaming", "sink_tokens": 2, "window": 30})
    st = e.strategy.new_state(e.loaded)
    st.forward(_torch.randint(0, 1000, (1, 28)))
    st.forward(_torch.randint(0, 1000, (1, 20)))  # evicts
    st.compact_tail(drop=10, keep=3)
    assert st.cache_tokens == 22
