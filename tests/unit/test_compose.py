"""Composing two strategies along the KVCacheState seams."""

import pytest

from longctx_llm import ConfigError, Engine, registry
from longctx_llm.builtins.full import FullStrategy
from longctx_llm.config import parse_config


class WideFull(FullStrategy):
    """A stand-in for a position-extending strategy: 4x the window, plain attention."""

    name = "wide-full"

    def context_window(self, info):
        return 4 * info.pretraining_length


@pytest.fixture
def wide():
    registry.register("strategy", "wide-full", WideFull)
    yield
    registry.unregister("strategy", "wide-full")


def test_stack_of_plain_strategies_equals_plain(tiny_model):
    lm = tiny_model("llama")
    plain = Engine(lm).complete("Once upon a time", max_new_tokens=12)
    stacked = Engine(lm, strategy=["full", "full"]).complete("Once upon a time", max_new_tokens=12)
    assert stacked.token_ids == plain.token_ids


def test_outer_is_validated_against_the_extended_window(tiny_model, wide):
    lm = tiny_model("llama", max_positions=64)
    engine = Engine(lm, strategy=["full", "wide-full"])
    assert engine.context_window == 256  # the outer's default window = the inner's extension
    assert engine.strategy.describe()["layers"][1]["name"] == "wide-full"


def test_yaml_list_and_errors(wide):
    cfg = parse_config({"strategy": [{"name": "full"}, "wide-full"]})
    assert [s.name for s in cfg.strategy] == ["full", "wide-full"]
    with pytest.raises(ConfigError, match="exactly 2"):
        parse_config({"strategy": ["full", "full", "full"]})
    with pytest.raises(ConfigError, match=r"strategy\[1\]\.name"):
        parse_config({"strategy": ["full", "nope"]})


def test_outer_that_owns_its_attention_is_refused(tiny_model):
    from longctx_llm import KVCacheState

    class Owning(FullStrategy):
        name = "owning"

        def new_state(self, model, batch_size=1):
            class S(KVCacheState):
                def attention(self):
                    return None

            return S(model, batch_size)

    registry.register("strategy", "owning", Owning)
    try:
        engine = Engine(tiny_model("llama"), strategy=["owning", "full"])
        with pytest.raises(ConfigError, match="sets its own attention"):
            engine.complete("hello", max_new_tokens=2)
    finally:
        registry.unregister("strategy", "owning")
