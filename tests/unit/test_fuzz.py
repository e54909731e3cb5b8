"""Property-based fuzzing of what users type: only our exception types escape, nothing hangs.

A fixed seed and a small example budget here; ``LONGCTX_FUZZ_EXAMPLES=2000 pytest -m fuzz`` for a longer run.
"""

import os

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from longctx_llm import Engine, LongctxError
from longctx_llm.config import parse_config

EXAMPLES = int(os.environ.get("LONGCTX_FUZZ_EXAMPLES", "25"))
pytestmark = pytest.mark.fuzz
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=8)
keys = st.sampled_from(["model", "strategy", "memory", "generation", "component", "name", "window", "chunk_size",
                        "max_new_tokens", "temperature", "seed", "stop", "source", "device", "dtype", "mode",
                        "comp_tokens", "ratio", "sink_tokens", "x"])
documents = st.dictionaries(keys, st.one_of(values, st.dictionaries(keys, values, max_size=4)), max_size=5)


@FUZZ
@seed(1)
@given(documents)
def test_pipeline_documents_only_raise_config_errors(doc):
    try:
        parse_config(doc)
    except LongctxError:
        pass


@FUZZ
@seed(2)
@given(st.text(max_size=300))
def test_yaml_text_only_raises_config_errors(tmp_path_factory, text):
    from longctx_llm.config import load_config

    path = tmp_path_factory.mktemp("yaml") / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if False else path.write_bytes(
        text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path)
    except LongctxError:
        pass


@pytest.fixture(scope="module")
def engine(tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx_llm.model import wrap_model

    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    return Engine(wrap_model(AutoModelForCausalLM.from_config(cfg), tokenizer), generation={"max_new_tokens": 2})


messages = st.one_of(
    st.text(max_size=20),
    st.lists(st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "x", 5]),
                               "content": st.one_of(st.text(max_size=20), st.none(), st.integers())}),
        values), max_size=3),
    values,
)
gen_kwargs = st.dictionaries(
    st.sampled_from(["max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop"]),
    st.one_of(st.integers(-5, 2**70), st.floats(allow_nan=True), st.text(max_size=5),
              st.lists(st.one_of(st.text(max_size=4), st.integers()), max_size=2)),
    max_size=3,
)


@FUZZ
@seed(3)
@given(messages, gen_kwargs, st.one_of(st.none(), st.sampled_from(["s1", "s2"])))
def test_engine_chat_only_raises_our_errors(engine, msgs, gen, session_id):
    try:
        engine.chat(msgs, session_id=session_id, **gen)
    except LongctxError:
        pass
