"""LongctxLLM construction and metadata: cheap init, the strategy's true window, bad settings."""

from __future__ import annotations

import pytest
from llama_index.core.indices.prompt_helper import PromptHelper
from llama_index.core.prompts import PromptTemplate

from longctx_llm import Engine, registry
from longctx_llm.builtins.full import FullStrategy
from longctx_llm.errors import ConfigError, PluginError
from llama_index.llms.longctx import LongctxLLM


class WideStrategy(FullStrategy):
    """A test strategy that claims 8x the pretraining window (as DCA does)."""

    name = "test-wide"

    def context_window(self, info):
        return 8 * info.pretraining_length


@pytest.fixture
def wide_strategy():
    registry.register("strategy", "test-wide", WideStrategy)
    yield "test-wide"
    registry.unregister("strategy", "test-wide")


def test_construction_loads_nothing():
    llm = LongctxLLM(model_name="smollm2-135m-instruct", strategy="full", max_new_tokens=8)
    assert not llm.engine.model_handle.is_loaded
    assert llm.model_name == "smollm2-135m-instruct"


def test_context_window_follows_the_strategy(tiny_model, wide_strategy):
    loaded = tiny_model("llama", max_positions=1024)
    full = LongctxLLM(engine=Engine(loaded, strategy="full"), max_new_tokens=64)
    wide = LongctxLLM(engine=Engine(loaded, strategy=wide_strategy), max_new_tokens=64)
    assert full.metadata.context_window == 1024
    assert wide.metadata.context_window == 8 * 1024
    assert wide.metadata.is_chat_model and wide.metadata.is_function_calling_model

    # PromptHelper (what response synthesizers pack retrieved text with) gives the wider strategy more room
    template = PromptTemplate("Context: {context_str}\nQuestion: {query_str}\nAnswer:")
    room_full = PromptHelper.from_llm_metadata(full.metadata).get_text_splitter_given_prompt(template, 1).chunk_size
    room_wide = PromptHelper.from_llm_metadata(wide.metadata).get_text_splitter_given_prompt(template, 1).chunk_size
    assert room_wide - room_full == 7 * 1024


def test_metadata_num_output_and_name(tiny_model):
    engine = Engine(tiny_model("llama"), generation={"max_new_tokens": 40})
    assert LongctxLLM(engine=engine).metadata.num_output == 40
    llm = LongctxLLM(engine=engine, max_new_tokens=12)
    assert llm.metadata.num_output == 12
    assert llm.metadata.model_name == engine.model_name == llm.model_name


def test_built_from_an_engine_shares_it(tiny_model):
    engine = Engine(tiny_model("llama"))
    llm = LongctxLLM(engine=engine)
    assert llm.engine is engine
    assert llm.strategy == {"name": "full", **engine.strategy.options.model_dump()}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"strategy": "no-such-strategy"}, "no-such-strategy"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"device": "tpu"}, "device"),
        ({"dtype": "int3"}, "dtype"),
        ({"stop": [""]}, "stop"),
        ({"messages_to_prompt": lambda m: "x"}, "messages_to_prompt"),
    ],
)
def test_bad_settings_raise_config_errors(kwargs, fragment):
    with pytest.raises((ConfigError, PluginError), match=fragment):
        LongctxLLM(model_name="smollm2-135m-instruct", **kwargs)


def test_engine_and_engine_fields_conflict(tiny_model):
    engine = Engine(tiny_model("llama"))
    with pytest.raises(ConfigError, match="strategy"):
        LongctxLLM(engine=engine, strategy="full")
    with pytest.raises(ConfigError, match="Engine"):
        LongctxLLM(engine="smollm2-135m-instruct")
