"""Bad input: clear ConfigErrors that name the value and the valid range."""

import pytest

from longctx_llm import Engine, registry
from longctx_llm.errors import ConfigError, InputError, LongctxError, UnsupportedModelError
from longctx_streaming import StreamingStrategy


def test_entry_point_registers_the_strategy():
    assert registry.get("strategy", "streaming") is StreamingStrategy
    caps = StreamingStrategy.capabilities
    assert caps.unbounded and not caps.rewind and caps.save and not caps.batching


@pytest.mark.parametrize(
    "options, words",
    [
        ({"window": 4, "sink_tokens": 4}, ["window (4)", "sink_tokens (4)", "window > sink_tokens"]),
        ({"window": 2, "sink_tokens": 8}, ["window (2)", "sink_tokens (8)"]),
        ({"window": -3}, ["strategy.window", "-3", "greater than 0"]),
        ({"sink_tokens": -1}, ["strategy.sink_tokens", "-1", "greater than or equal to 0"]),
        ({"prefill_chunk_size": 0}, ["strategy.prefill_chunk_size", "0"]),
        ({"window": 64, "prefill_chunk_size": 65}, ["prefill_chunk_size (65)", "valid: 1..64"]),
        ({"windw": 64}, ["strategy.windw", "unknown field"]),
    ],
)
def test_bad_options_raise_config_error(options, words):
    with pytest.raises(ConfigError) as e:
        Engine("smollm2-135m-instruct", strategy={"name": "streaming", **options})
    for w in words:
        assert w in str(e.value)


def test_window_above_pretraining_length_points_to_dca(tiny_model):
    model = tiny_model("llama", max_positions=64)
    engine = Engine(model, strategy={"name": "streaming", "sink_tokens": 4, "window": 61})
    with pytest.raises(ConfigError) as e:
        engine.complete("hello there")
    msg = str(e.value)
    assert "4 + 61 = 65" in msg and "pretraining length 64" in msg and "window <= 60" in msg and "DCA" in msg


def test_rewind_and_padding_are_refused(tiny_model):
    model = tiny_model("llama")
    state = StreamingStrategy(window=16).new_state(model)
    state.forward(model.tokenizer("a b c", return_tensors="pt")["input_ids"])
    with pytest.raises(LongctxError, match="append-only"):
        state.rewind(1)
    import torch

    with pytest.raises(InputError, match="padded"):
        state.forward(torch.tensor([[5, 6]]), torch.tensor([[0, 1]]))


def test_model_without_rope_is_unsupported(tiny_model):
    from longctx_llm.model import hf_adapter

    info = hf_adapter.ModelInfo("gpt2", 1024, 2, 4, 4, 16, None)
    with pytest.raises(UnsupportedModelError, match="gpt2"):
        StreamingStrategy().validate(info)
