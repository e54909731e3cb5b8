"""Bad options and unsupported models raise the project's errors, naming the bad value and the valid ones."""

from __future__ import annotations

import pytest

from longctx_dca.strategy import DCAStrategy
from longctx_llm import Engine
from longctx_llm.errors import ConfigError, ContextWindowError, UnsupportedModelError
from longctx_llm.model import ModelInfo


def info(model_type="llama", L=8192, rope="default") -> ModelInfo:
    return ModelInfo(model_type, L, 2, 4, 2, 16, rope)


@pytest.mark.parametrize(
    "opts, needle",
    [
        ({"chunk_size": 0}, "strategy.chunk_size: Input should be greater than 0, got 0"),
        ({"local_window": -5}, "strategy.local_window: Input should be greater than 0, got -5"),
        ({"max_length": 0}, "strategy.max_length: Input should be greater than 0, got 0"),
        ({"prefill_chunk_size": -1}, "strategy.prefill_chunk_size: Input should be greater than 0, got -1"),
        ({"chunk_size": 100, "local_window": 100}, "local_window=100 >= chunk_size=100 (valid: 0 < local_window"),
        ({"chunk": 3}, "strategy.chunk: unknown field, got 3"),
        ({"backend": "triton"}, "strategy.backend: Input should be 'auto', 'math'"),
    ],
)
def test_bad_options_without_a_model(opts, needle):
    with pytest.raises(ConfigError) as e:
        DCAStrategy(**opts)
    assert needle in str(e.value)


def test_bad_options_through_the_engine():
    with pytest.raises(ConfigError, match=r"strategy.chunk_size: Input should be greater than 0, got -3"):
        Engine("smollm2-135m-instruct", strategy={"name": "dca", "chunk_size": -3})


def test_chunk_size_at_or_past_pretraining_length():
    with pytest.raises(ConfigError) as e:
        DCAStrategy(chunk_size=8192).validate(info())
    assert "strategy.chunk_size: 8192 must be smaller than the pretraining length 8192" in str(e.value)
    assert "valid: local_window < chunk_size < 8192; default 6144" in str(e.value)


def test_local_window_past_the_default_chunk_size():
    with pytest.raises(ConfigError, match=r"strategy.local_window: 7000 must be smaller than chunk_size 6144"):
        DCAStrategy(local_window=7000).validate(info())


def test_no_pretraining_length():
    with pytest.raises(ConfigError, match="set pretraining_length"):
        DCAStrategy().validate(info(L=0))
    DCAStrategy(pretraining_length=4096).validate(info(L=0))


@pytest.mark.parametrize("mtype, rope", [("gpt2", None), ("bloom", None), ("llama", None)])
def test_model_without_rope(mtype, rope):
    with pytest.raises(UnsupportedModelError) as e:
        DCAStrategy().validate(info(mtype, rope=rope))
    assert f"model_type {mtype!r} is not supported" in str(e.value)
    assert "supported: gpt_neox, llama, mistral, qwen2, qwen3" in str(e.value)


def test_dynamic_rope_is_refused():
    with pytest.raises(UnsupportedModelError, match="rope_type 'dynamic' is not supported"):
        DCAStrategy().validate(info(rope="dynamic"))


def test_gpt2_model_through_the_engine(tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    from longctx_llm.model import wrap_model

    model = wrap_model(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=49152)), tokenizer)
    engine = Engine(model, strategy="dca")
    with pytest.raises(UnsupportedModelError, match="strategy 'dca' needs a rotary-position model; model_type 'gpt2'"):
        engine.complete("hello")


def test_prompt_beyond_max_length(tiny_model):
    engine = Engine(tiny_model("llama", max_positions=256), strategy={"name": "dca", "max_length": 300})
    with pytest.raises(ContextWindowError, match=r"prompt has \d+ tokens but strategy 'dca' has a 300-token window"):
        engine.complete("word " * 400, max_new_tokens=1)
