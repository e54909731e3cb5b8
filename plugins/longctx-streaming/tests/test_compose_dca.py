"""The shift layout: equal to the ring alone, and it hosts DCA (``strategy: [streaming(layout=shift), dca]``)."""

import pytest
import torch

from longctx_llm import ConfigError, Engine


def _stream(state, ids, piece):
    outs = []
    for start in range(0, ids.shape[1], piece):
        outs.append(state.forward(ids[:, start : start + piece], all_logits=True))
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_shift_layout_equals_ring_layout(tiny_model, arch):
    lm = tiny_model(arch, max_positions=256)
    ids = torch.randint(5, 40000, (1, 300))
    logits = {}
    for layout in ("ring", "shift"):
        engine = Engine(lm, strategy={"name": "streaming", "sink_tokens": 4, "window": 60, "layout": layout})
        state = engine.strategy.new_state(lm)
        logits[layout] = _stream(state, ids, 16)
        assert state.cache_tokens == 64
    torch.testing.assert_close(logits["shift"], logits["ring"], atol=2e-4, rtol=2e-4)


def test_streaming_hosts_dca_beyond_the_trained_length(tiny_model):
    # one layer: deeper layers' kept keys remember evicted text (computed once, StreamingLLM's semantics), so only a
    # one-layer model has a from-scratch reference over the kept tokens
    lm = tiny_model("llama", max_positions=64, num_hidden_layers=1)
    dca = {"name": "dca", "chunk_size": 48, "local_window": 8}
    window = 120  # above the model's 64 positions: allowed because DCA extends it
    engine = Engine(lm, strategy=[{"name": "streaming", "sink_tokens": 4, "window": window, "layout": "shift"}, dca])
    state = engine.strategy.new_state(lm)
    engine.strategy.validate(lm.info)
    ids = torch.randint(5, 40000, (1, 300))
    out = _stream(state, ids, 20)
    assert state.cache_tokens == 4 + window
    # reference: DCA alone over exactly the kept tokens (the sinks and the last `window` tokens), from scratch
    kept = torch.cat([ids[:, :4], ids[:, -window:]], dim=1)
    ref_state = Engine(lm, strategy=dca).strategy.new_state(lm)
    ref = ref_state.forward(kept, all_logits=True)
    torch.testing.assert_close(out[:, -1], ref[:, -1], atol=1e-4, rtol=1e-4)
    # and one decode step on top agrees too
    nxt = torch.tensor([[1234]])
    torch.testing.assert_close(state.forward(nxt)[:, -1], _dca_next(lm, dca, kept, window, nxt), atol=1e-4, rtol=1e-4)


def _dca_next(lm, dca, kept, window, nxt):
    """DCA alone over the cache after one more token: the oldest window token evicted, the new one appended."""
    seq = torch.cat([kept[:, :4], kept[:, 5:], nxt], dim=1)
    return Engine(lm, strategy=dca).strategy.new_state(lm).forward(seq)[:, -1]


def test_window_beyond_trained_length_needs_dca(tiny_model):
    lm = tiny_model("llama", max_positions=64)
    with pytest.raises(ConfigError, match="combine streaming with DCA"):
        Engine(lm, strategy={"name": "streaming", "window": 120, "layout": "shift"}).complete("hi", max_new_tokens=1)
    ring = Engine(lm, strategy=[{"name": "streaming", "window": 120}, {"name": "dca", "chunk_size": 48, "local_window": 8}])
    with pytest.raises(ConfigError, match="sets its own"):
        ring.complete("hi", max_new_tokens=1)
