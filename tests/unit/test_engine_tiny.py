"""The engine on tiny random models of each architecture: exactness against transformers, batching, sessions."""

import pytest
import torch

from longctx_llm import ContextWindowError, Engine, InputError, SessionError
from longctx_llm.config import GenerationConfig
from longctx_llm.runtime import generate, run_to_end

#: architectures the root conftest's ``tiny_model`` builds (not imported: plugin test dirs have their own conftest)
TINY_ARCHS = ("llama", "qwen2", "gpt_neox")
PROMPT = "The quick brown fox jumps over the lazy dog because"


@pytest.mark.parametrize("arch", TINY_ARCHS + ("mistral", "qwen3"))
def test_greedy_loop_equals_model_generate(tiny_model, arch):
    lm = tiny_model(arch)
    engine = Engine(lm, strategy="full")
    ours = engine.complete(PROMPT, max_new_tokens=24)
    ids = torch.tensor([engine.tokenize(PROMPT)])
    ref = lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False,
                            eos_token_id=sorted(lm.eos_token_ids), pad_token_id=2)
    ref_new = ref[0, ids.shape[1]:].tolist()
    assert ours.token_ids == ref_new[: len(ours.token_ids)]
    assert ours.prompt_tokens == ids.shape[1]
    assert ours.completion_tokens == len(ours.token_ids)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_chunked_prefill_equals_one_pass(tiny_model, arch):
    lm = tiny_model(arch)
    ids = torch.randint(5, 40000, (1, 100))
    whole = Engine(lm, strategy={"name": "full", "prefill_chunk_size": 1000}).strategy.new_state(lm)
    chunked = Engine(lm, strategy={"name": "full", "prefill_chunk_size": 17}).strategy.new_state(lm)
    a = whole.forward(ids, all_logits=True)
    b = chunked.forward(ids, all_logits=True)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert chunked.seen == 100


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_left_padded_batch_equals_rows_alone(tiny_model, arch):
    lm = tiny_model(arch)
    engine = Engine(lm, generation={"max_new_tokens": 12})
    prompts = ["Hello", "A much longer prompt about the history of Paris and France", "Numbers: 1 2 3"]
    batch = engine.complete_batch(prompts)
    for p, c in zip(prompts, batch):
        alone = engine.complete(p)
        assert c.token_ids == alone.token_ids, p
        assert c.prompt_tokens == alone.prompt_tokens


def test_stop_strings_and_token_counts(tiny_model):
    engine = Engine(tiny_model("llama"))
    free = engine.complete(PROMPT, max_new_tokens=20)
    assert free.finish_reason == "length" and free.completion_tokens == 20
    stop = free.text[5:9]
    cut = engine.complete(PROMPT, max_new_tokens=20, stop=[stop])
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert cut.text == free.text[: free.text.index(stop)]
    streamed = engine.stream(PROMPT, max_new_tokens=20, stop=[stop])
    assert "".join(streamed) == cut.text and streamed.completion.text == cut.text


def test_window_error_names_window_and_fitting_strategies(tiny_model):
    engine = Engine(tiny_model("llama", max_positions=64))
    with pytest.raises(ContextWindowError) as e:
        engine.complete("word " * 200)
    msg = str(e.value)
    assert "64-token window" in msg and "'full'" in msg and "tokens" in msg
    # the engine keeps working after the error
    assert engine.complete("Hello", max_new_tokens=3).completion_tokens == 3


def test_generation_stops_at_the_window(tiny_model):
    engine = Engine(tiny_model("llama", max_positions=32))
    c = engine.complete("one two three four five", max_new_tokens=100)
    assert c.finish_reason in ("length", "stop")
    assert c.prompt_tokens + c.completion_tokens <= 33


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_empty_or_non_string_prompt_is_rejected(tiny_model, bad):
    engine = Engine(tiny_model("llama"))
    with pytest.raises(InputError):
        engine.complete(bad)


def test_bad_generation_override_is_input_error(tiny_model):
    engine = Engine(tiny_model("llama"))
    with pytest.raises(InputError, match="stop"):
        engine.complete("hi", stop=[""])
    with pytest.raises(InputError, match="temperature"):
        engine.complete("hi", temperature=-2)


def _chat(engine, sid, text):
    return engine.chat(text, session_id=sid, max_new_tokens=8)


def test_session_turns_feed_only_new_tokens(tiny_model):
    lm = tiny_model("llama")
    engine = Engine(lm)
    first = _chat(engine, "s", "Hi there")
    s = engine.session("s")
    cached_after_first = len(s.cached_ids)
    assert s.state.seen == cached_after_first
    fed = []
    original = s.state.forward
    s.state.forward = lambda ids, *a, **k: (fed.append(ids.shape[1]), original(ids, *a, **k))[1]
    second = _chat(engine, "s", "Tell me more")
    assert s.turns == 2 and len(s.history) == 4
    # the prefill of turn 2 re-fed the tail of turn 1 (its end-of-turn marker) and the new turn, not the history
    assert fed[0] < second.prompt_tokens - cached_after_first + 8
    assert s.state.seen == len(s.cached_ids)
    # and the cache holds exactly what a stateless run of the same conversation would produce
    stateless = engine.chat(s.history[:-1], max_new_tokens=8)
    assert stateless.text == second.text
    assert first.text


def test_sessions_are_isolated(tiny_model):
    engine = Engine(tiny_model("qwen2"))
    a1 = _chat(engine, "a", "Alpha question")
    b1 = _chat(engine, "b", "Something else entirely")
    a2 = _chat(engine, "a", "Follow up")
    fresh = Engine(engine.loaded)
    assert _chat(fresh, "a", "Alpha question").text == a1.text
    assert _chat(fresh, "a", "Follow up").text == a2.text
    assert engine.session("b").history[0]["content"] == "Something else entirely"
    assert b1.text


def test_session_save_restore_continue(tiny_model, tmp_path):
    lm = tiny_model("gpt_neox")
    engine = Engine(lm)
    _chat(engine, "s", "First message")
    path = engine.save_session("s", tmp_path / "saved")
    cont = _chat(engine, "s", "Second message")
    other = Engine(lm)
    restored = other.load_session(path)
    assert restored.cached_ids == restored.cached_ids and restored.turns == 1
    assert _chat(other, "s", "Second message").text == cont.text
    # saving again over its own earlier save (overwrite=True) is atomic and leaves a readable save
    engine.save_session("s", tmp_path / "saved", overwrite=True)
    Engine(lm).load_session(tmp_path / "saved")


def test_session_restore_errors(tiny_model, tmp_path):
    engine = Engine(tiny_model("llama"))
    with pytest.raises(SessionError, match="no session"):
        engine.save_session("missing", tmp_path / "x")
    with pytest.raises(SessionError, match="not a saved session"):
        engine.load_session(tmp_path)
    _chat(engine, "s", "hello")
    path = engine.save_session("s", tmp_path / "ok")
    other = Engine(engine.loaded, memory={"name": "buffer", "max_turns": 2})
    with pytest.raises(SessionError, match="memory"):
        other.load_session(path)
    (tmp_path / "ok" / "session.json").write_text('{"format_version": 99}')
    with pytest.raises(SessionError, match="version"):
        engine.load_session(tmp_path / "ok")


def test_buffer_memory_max_turns_limits_what_the_model_sees(tiny_model):
    engine = Engine(tiny_model("llama"), memory={"name": "buffer", "max_turns": 1})
    _chat(engine, "s", "first")
    c = _chat(engine, "s", "second")
    alone = engine.chat([{"role": "user", "content": "second"}], max_new_tokens=8)
    assert c.text == alone.text


def test_chat_rejects_bad_messages(tiny_model):
    engine = Engine(tiny_model("llama"))
    with pytest.raises(InputError, match="role"):
        engine.chat([{"role": "wizard", "content": "hi"}])
    with pytest.raises(InputError, match="empty"):
        engine.chat([])
    with pytest.raises(InputError, match="empty"):
        engine.chat([{"role": "user", "content": "  "}])


def test_generate_reports_tokens_fed(tiny_model):
    lm = tiny_model("llama")
    state = Engine(lm).strategy.new_state(lm)
    ids = torch.tensor([[5, 6, 7, 8]])
    fed = [[]]
    out = run_to_end(generate(state, lm.tokenizer, ids, None, GenerationConfig(max_new_tokens=5), frozenset(),
                              fed_tokens=fed))
    assert len(fed[0]) == 4 and state.seen == 4 + 4  # the last sampled token is never fed
    assert out[0].completion_tokens == 5


def test_score_returns_per_token_nll(tiny_model):
    engine = Engine(tiny_model("llama"))
    ids = torch.randint(5, 40000, (50,))
    nll = engine.score(ids, chunk_size=16)
    assert nll.shape == (49,)
    state = engine.strategy.new_state(engine.loaded)
    logits = state.forward(ids[None], all_logits=True)[0]
    ref = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="none")
    torch.testing.assert_close(nll, ref, atol=1e-4, rtol=1e-4)
