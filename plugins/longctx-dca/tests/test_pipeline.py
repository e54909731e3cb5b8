"""``strategy: {name: dca}`` through YAML pipelines and the Engine (the plugin is found by entry point)."""

from __future__ import annotations

import pytest
import torch

from longctx_dca.strategy import DCAStrategy
from longctx_llm import Engine, load_pipeline, registry
from longctx_llm.errors import ConfigError


def test_entry_point_registered():
    assert registry.get("strategy", "dca") is DCAStrategy


def test_yaml_pipeline_builds_dca(tmp_path):
    path = tmp_path / "dca.yaml"
    path.write_text(
        "model: {source: smollm2-135m-instruct, device: cpu}\n"
        "strategy: {name: dca, chunk_size: 768, local_window: 128, max_length: 16384}\n"
    )
    bot = load_pipeline(path)  # loads no model yet
    assert isinstance(bot.engine.strategy, DCAStrategy)
    assert bot.engine.strategy.options.chunk_size == 768
    assert bot.engine.strategy.describe()["name"] == "dca"


def test_yaml_bad_option_names_the_path(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("strategy: {name: dca, local_window: 0}\n")
    with pytest.raises(ConfigError, match=r"strategy.local_window: Input should be greater than 0, got 0"):
        load_pipeline(path)


def test_engine_generates_past_the_pretraining_length(tiny_model):
    """A 400-token prompt on a 256-position model: DCA's window (8L) admits it and generation runs."""
    engine = Engine(tiny_model("llama", max_positions=256), strategy={"name": "dca"})
    assert engine.context_window == 2048
    ids = torch.randint(5, 49000, (400,), generator=torch.Generator().manual_seed(0)).tolist()
    out = engine.complete(engine.tokenizer.decode(ids), max_new_tokens=4)
    assert out.completion_tokens == 4 and out.prompt_tokens >= 256


def test_session_save_and_restore(tiny_model, tmp_path):
    engine = Engine(tiny_model("qwen2", max_positions=256), strategy="dca")
    first = engine.chat("word " * 150, session_id="s", max_new_tokens=3)
    engine.save_session("s", tmp_path / "s")
    other = Engine(engine.model_handle, strategy="dca")
    other.load_session(tmp_path / "s")
    a = engine.chat("more words " * 20, session_id="s", max_new_tokens=3)
    b = other.chat("more words " * 20, session_id="s", max_new_tokens=3)
    assert first.completion_tokens == 3
    assert a.token_ids == b.token_ids
