"""Decoding one step ahead (``lookahead``, on by default with CUDA graphs) gives the same replies and leaves
sessions exactly as decoding step by step does.

On a GPU the loop queues the next forward before the host reads the sampled token, and rewinds the one token fed
ahead when the reply ends (``generation._step_ahead``). On CPU the same bookkeeping runs without the overlap
(``lookahead: true`` with ``static_cache: true``), which is how these tests compare it against step by step.
"""

from __future__ import annotations

import pytest
import torch

from longctx_llm import Engine


def _engine(loaded, on, name="full", **kw):
    return Engine(loaded, strategy={"name": name, "static_cache": True, "lookahead": on, **kw})


def _consistent(engine, sid):
    s = engine._sessions[sid]
    assert s.state.seen == len(s.cached_ids)
    return list(s.cached_ids)


@pytest.mark.parametrize("name", ["full", "dca"])
def test_replies_and_sessions_equal_step_by_step(tiny_model, name):
    kw = {"chunk_size": 64, "local_window": 16} if name == "dca" else {}
    loaded = tiny_model("llama", max_positions=512)
    runs = []
    for on in (False, True):
        engine = _engine(loaded, on, name, **kw)
        assert engine.strategy.new_state(loaded, 1).lookahead is on
        out = []
        msgs = [{"role": "user", "content": "Tell me a story."}]
        for turn, n in enumerate([12, 1, 2, 9]):
            c = engine.chat(msgs, session_id="s", temperature=0.0, max_new_tokens=n)
            out.append((c.token_ids, c.text, c.finish_reason, _consistent(engine, "s")))
            msgs = [*msgs, {"role": "assistant", "content": c.text}, {"role": "user", "content": f"And then {turn}?"}]
        runs.append(out)
    assert runs[0] == runs[1]


def test_stop_string_and_window_end_the_reply_the_same(tiny_model):
    loaded = tiny_model("llama", max_positions=512)
    base = _engine(loaded, False).chat([{"role": "user", "content": "Go on."}], max_new_tokens=20, temperature=0.0)
    stop = base.text[len(base.text) // 2 : len(base.text) // 2 + 3]
    assert stop.strip()
    replies = []
    for on in (False, True):
        engine = _engine(loaded, on)
        a = engine.chat([{"role": "user", "content": "Go on."}], session_id="a", max_new_tokens=20, temperature=0.0,
                        stop=[stop])
        # the window: a strategy limited to a few tokens past the prompt ends with "length"
        small = _engine(loaded, on, max_length=40)
        b = small.chat([{"role": "user", "content": "Go on."}], session_id="b", max_new_tokens=50, temperature=0.0)
        replies.append((a.text, a.finish_reason, a.stop_reason, _consistent(engine, "a"), b.token_ids,
                        b.finish_reason, _consistent(small, "b")))
    assert replies[0] == replies[1]
    assert replies[1][2] == stop and replies[1][5] == "length"


def test_a_stream_closed_midway_leaves_the_session_consistent(tiny_model):
    loaded = tiny_model("llama", max_positions=512)
    engine = _engine(loaded, True)
    msgs = [{"role": "user", "content": "Tell me a story."}]
    stream = engine.stream_chat(msgs, session_id="s", max_new_tokens=30, temperature=0.0)
    for i, _ in enumerate(stream):
        if i == 4:
            break
    stream.close()
    assert _consistent(engine, "s")
    # the next turn reuses what the cache holds and answers as a fresh engine does
    got = engine.chat(msgs, session_id="s", max_new_tokens=8, temperature=0.0)
    want = _engine(loaded, False).chat(msgs, max_new_tokens=8, temperature=0.0)
    assert got.token_ids == want.token_ids


def test_lookahead_is_a_speed_option_and_needs_the_static_cache(tiny_model):
    loaded = tiny_model("llama", max_positions=512)
    plain = Engine(loaded, strategy={"name": "full", "lookahead": True})  # CPU default: DynamicCache
    assert not plain.strategy.new_state(loaded, 1).lookahead
    assert plain.strategy.identity() == Engine(loaded, strategy="full").strategy.identity()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the overlap needs a CUDA device")
def test_cuda_default_steps_ahead_and_equals_step_by_step(tiny_model):
    """On CUDA the defaults decode one step ahead (pinned copy + event); replies and sessions equal it off."""
    loaded = tiny_model("llama", device="cuda", max_positions=512)
    engines = [Engine(loaded, strategy="full"), Engine(loaded, strategy={"name": "full", "lookahead": False})]
    assert engines[0].strategy.new_state(loaded, 1).lookahead
    msgs = [{"role": "user", "content": "Tell me a story."}]
    got = [([e.chat(msgs, session_id="s", max_new_tokens=n, temperature=0.0).token_ids for n in (20, 5)],
            _consistent(e, "s")) for e in engines]
    assert got[0] == got[1]
