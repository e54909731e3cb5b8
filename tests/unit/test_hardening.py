"""Hardening of the engine's inputs: foreign code, text that is not Unicode, odd arguments, abandoned streams, and
an append-only cache that must never hold stale tokens."""

import json
import shutil
import subprocess
import sys

import pytest

from longctx_llm import ConfigError, Engine, InputError, ModelHandle, SessionError


def test_a_model_folders_own_code_never_runs(tiny_model_dir, tmp_path):
    d = tmp_path / "model"
    shutil.copytree(tiny_model_dir, d)
    marker = tmp_path / "ran"
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nfrom transformers import LlamaForCausalLM as Evil\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "evil.Evil"}
    (d / "config.json").write_text(json.dumps(cfg))
    code = (
        "import sys; from longctx_llm.model.loading import ModelHandle\n"
        f"h = ModelHandle({str(d)!r}, device='cpu')\n"
        "try:\n    h.get()\nexcept Exception as e:\n    print(type(e).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input="yes\nyes\n", capture_output=True, text=True, timeout=300,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert not marker.exists(), out.stdout + out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("text", ["caf\udce9", "hi \udcff"])
def test_text_that_is_not_unicode_is_an_input_error(tiny_model, text):
    engine = Engine(tiny_model("llama"), generation={"max_new_tokens": 3})
    with pytest.raises(InputError, match="not valid Unicode"):
        engine.chat(text)
    with pytest.raises(InputError, match="not valid Unicode"):
        engine.complete(text)
    with pytest.raises(InputError, match="not valid Unicode"):
        engine.chat(text, session_id="s")
    assert engine.chat("hello", session_id="s").completion_tokens > 0  # the session goes on


@pytest.mark.parametrize(
    "call,error,fragment",
    [
        (lambda e: e.chat(5), InputError, "expected a list of messages"),
        (lambda e: e.chat("hi", stop=5), InputError, "stop: expected a string or a list of strings"),
        (lambda e: e.chat([{"role": ["user"], "content": "x"}]), InputError, "not a valid role"),
    ],
)
def test_odd_arguments_are_clear_errors(tiny_model, call, error, fragment):
    with pytest.raises(error, match=fragment):
        call(Engine(tiny_model("llama"), generation={"max_new_tokens": 3}))


def test_odd_construction_is_a_config_error(tiny_model):
    lm = tiny_model("llama")
    with pytest.raises(ConfigError, match="generation: expected a mapping"):
        Engine(lm, generation="x")
    with pytest.raises(ConfigError, match="strategy: empty name"):
        Engine(lm, strategy="")


def test_developer_role_is_the_system_role(tiny_model):
    e = Engine(tiny_model("llama"), generation={"max_new_tokens": 4})
    a = e.chat([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    b = e.chat([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert a.token_ids == b.token_ids


def test_an_abandoned_stream_does_not_block_its_session_forever(tiny_model):
    e = Engine(tiny_model("llama"), generation={"max_new_tokens": 20})
    e.session_wait_s = 0.5
    stream = e.stream_chat("Tell me a story.", session_id="s")
    next(stream)  # started, then abandoned (still referenced, never closed)
    with pytest.raises(SessionError, match="neither read to the end nor closed"):
        e.chat("Hello?", session_id="s")
    stream.close()
    assert e.chat("Hello?", session_id="s").completion_tokens > 0


def test_streaming_session_feeds_only_the_new_turn_when_the_reply_retokenises(tiny_model):
    """Random replies of a tiny model rarely survive decode + encode unchanged: the next prompt must reuse the
    generated tokens (same text) instead of re-feeding the conversation into an append-only cache."""
    e = Engine(tiny_model("llama", max_positions=1024), strategy={"name": "streaming", "window": 900},
               generation={"max_new_tokens": 24})
    state = e.session("s").state
    differed, fed = 0, []
    for turn in ("First question here.", "Second one.", "Third one, longer than the others.", "Fourth."):
        before = len(e.session("s").cached_ids)
        reply = e.chat(turn, session_id="s")
        differed += e.tokenize(reply.text, add_special_tokens=False) != reply.token_ids[: len(e.tokenize(reply.text, add_special_tokens=False))]
        fed.append(len(e.session("s").cached_ids) - before)
        assert e.session("s").state is state  # never rebuilt
    assert differed >= 1
    assert max(fed) < 80  # each turn feeds its own tokens and the reply, not the whole conversation


def test_seed_and_temperature_bounds(tiny_model):
    e = Engine(tiny_model("llama"), generation={"max_new_tokens": 2})
    with pytest.raises(InputError, match="seed"):
        e.chat("hi", seed=2**70, temperature=0.5)
    with pytest.raises(InputError, match="temperature"):
        e.chat("hi", temperature=float("inf"))


def test_trust_remote_code_is_an_explicit_opt_in():
    from longctx_llm.config import parse_config

    assert parse_config({}).model.trust_remote_code is False
    assert parse_config({"model": {"trust_remote_code": True}}).model.trust_remote_code is True


def test_extend_and_chat_do_not_mix_in_one_session(tiny_model):
    e = Engine(tiny_model("llama"), generation={"max_new_tokens": 3})
    e.chat("Hello", session_id="c")
    with pytest.raises(SessionError, match="holds a chat"):
        e.extend("c", [5, 6, 7])
    e.extend("r", [5, 6, 7])
    with pytest.raises(SessionError, match="raw text turns"):
        e.chat("Hello", session_id="r")


def test_extend_returns_logits_for_every_token_given(tiny_model):
    e = Engine(tiny_model("llama"))
    e.extend("r", [5, 6, 7, 8])
    e.session("r").token_ids = [5, 6]  # the cache holds more than the conversation: the next tokens are cached too
    out = e.extend("r", [7, 8, 9], end_turn=False, all_logits=True)
    assert out.shape[1] == 3


def test_out_of_memory_is_reported_and_the_engine_serves_the_next_request(tiny_model, monkeypatch):
    import torch

    from longctx_llm import KVCacheState, ResourceError

    e = Engine(tiny_model("llama"), generation={"max_new_tokens": 4})
    e.chat("A first turn.", session_id="s")
    real = KVCacheState.forward
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second forward of the next request: mid-generation
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(self, *a, **k)

    monkeypatch.setattr(KVCacheState, "forward", flaky)
    with pytest.raises(ResourceError, match="out of memory"):
        e.chat("A second turn that runs out of memory.", session_id="s")
    with pytest.raises(ResourceError):
        calls["n"] = 1
        e.complete("stateless too")
    monkeypatch.setattr(KVCacheState, "forward", real)
    assert e.chat("And the next one works.", session_id="s").completion_tokens > 0
    assert e.session("s").state.seen == len(e.session("s").cached_ids)
