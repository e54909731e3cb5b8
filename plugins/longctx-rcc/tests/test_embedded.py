"""The shipped compressor on the embedded SmolLM2: loads by default, compresses a long prompt, answers."""

import pytest

from longctx_llm import Engine


@pytest.mark.integration
def test_shipped_compressor_serves_the_embedded_model(smollm):
    engine = Engine(smollm, strategy="rcc", generation={"max_new_tokens": 8})
    text = (open("tests/data/pydocs_tutorial.txt").read() * 2)[:14000]
    ids = engine.tokenize(text, add_special_tokens=False)[:2600]
    out = engine.complete_ids(ids)
    assert out.completion_tokens >= 1
    comp = engine.strategy.compressor_for(smollm)
    assert comp.card["base_model"]["sha256"] == smollm.fingerprint
    state = engine.strategy.new_state(smollm)
    state.forward(__import__("torch").tensor([ids]))
    assert state.windows == 2 and state.cache_entries == 2 * 32 + (2600 - 2048)
    assert engine.context_window == (8192 - 1024 - 32) * 32 + 1024 + 32  # slots, one window, the raw tail
