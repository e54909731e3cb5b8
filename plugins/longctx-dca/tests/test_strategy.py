"""DCA on tiny random models of every supported architecture: exactness against plain attention and itself."""

from __future__ import annotations

import pytest
import torch

from longctx_dca.strategy import DCAStrategy
from longctx_llm.builtins.full import FullStrategy

ARCHS = ("llama", "qwen2", "gpt_neox", "mistral", "qwen3")
L = 256  # tiny pretraining length: chunk_size 192, local_window 32, chunk_len 160


def ids(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(5, 49000, (1, n), generator=g)


def logits(strategy, model, x, mask=None) -> torch.Tensor:
    return strategy.new_state(model, x.shape[0]).forward(x, mask, all_logits=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_inside_one_chunk_equals_full_attention(tiny_model, arch):
    """Positions below the chunk length are untouched by DCA: same logits as plain attention (DCA §3)."""
    model = tiny_model(arch, max_positions=L)
    x = ids(150)  # < chunk_len 160
    dca = logits(DCAStrategy(), model, x)
    full = logits(FullStrategy(), model, x)
    torch.testing.assert_close(dca, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_decode_step_equals_prefill_of_n_plus_one(tiny_model, arch):
    """Prompt spanning four chunks (intra, successive and inter parts all used); one decode step == prefill."""
    model = tiny_model(arch, max_positions=L)
    x = ids(600)
    strat = DCAStrategy()
    whole = strat.new_state(model).forward(x)[:, -1]  # (1, V)
    state = strat.new_state(model)
    state.forward(x[:, :-1])
    step = state.forward(x[:, -1:])[:, -1]
    torch.testing.assert_close(step, whole, atol=1e-4, rtol=1e-4)


def test_prefill_piece_size_does_not_change_logits(tiny_model):
    """Unaligned prefill pieces (queries starting mid-chunk) give the same logits as chunk-aligned ones."""
    model = tiny_model("llama", max_positions=L)
    x = ids(600, seed=3)
    aligned = logits(DCAStrategy(), model, x)
    odd = logits(DCAStrategy(prefill_chunk_size=97), model, x)
    torch.testing.assert_close(odd, aligned, atol=1e-4, rtol=1e-4)


def test_math_backend_equals_fast_backend(tiny_model):
    """The blocked (reference) path and the fused-kernel path agree on a whole model."""
    model = tiny_model("qwen2", max_positions=L)
    x = ids(500, seed=4)
    fast = logits(DCAStrategy(), model, x)
    ref = logits(DCAStrategy(backend="math"), model, x)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_padded_batch_rows_equal_rows_alone(tiny_model, arch):
    model = tiny_model(arch, max_positions=128)  # chunk_len 80: both rows span 3+ chunks
    a, b = ids(260, seed=1), ids(170, seed=2)
    width = a.shape[1]
    pad = torch.full((1, width - b.shape[1]), 2)
    batch = torch.cat([a, torch.cat([pad, b], 1)])
    mask = torch.ones_like(batch)
    mask[1, : pad.shape[1]] = 0
    strat = DCAStrategy()
    state = strat.new_state(model, 2)
    out = state.forward(batch, mask, all_logits=True)  # (2, T, V)
    torch.testing.assert_close(out[0], logits(strat, model, a)[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1, pad.shape[1] :], logits(strat, model, b)[0], atol=1e-4, rtol=1e-4)
    # and a decode step on the padded batch matches each row's own decode step
    nxt = torch.tensor([[7], [11]])
    step = state.forward(nxt)[:, -1]
    for row, seq in ((0, a), (1, b)):
        alone = strat.new_state(model)
        alone.forward(seq)
        torch.testing.assert_close(step[row], alone.forward(nxt[row : row + 1])[0, -1], atol=1e-4, rtol=1e-4)


def test_far_context_differs_from_plain_attention(tiny_model):
    """Past the chunk length DCA is a different attention (keys at j mod s), not a silent fallback."""
    model = tiny_model("llama", max_positions=L)
    x = ids(400)
    assert not torch.allclose(logits(DCAStrategy(), model, x)[:, -1], logits(FullStrategy(), model, x)[:, -1])


def test_positions_fed_to_rope_wrap_at_chunk_len(tiny_model):
    model = tiny_model("llama", max_positions=L)
    state = DCAStrategy().new_state(model)
    pos = torch.arange(400)[None]
    assert state.rope_positions(pos).max().item() == 159
    assert torch.equal(state.rope_positions(pos)[0, 160:320], torch.arange(160))


def test_rewind_then_refeed_matches(tiny_model):
    model = tiny_model("llama", max_positions=L)
    x = ids(420, seed=5)
    strat = DCAStrategy()
    state = strat.new_state(model)
    first = state.forward(x)[:, -1]
    state.rewind(300)
    again = state.forward(x[:, 300:])[:, -1]
    torch.testing.assert_close(again, first, atol=1e-4, rtol=1e-4)


def test_context_window_is_max_length(tiny_model):
    model = tiny_model("llama", max_positions=L)
    assert DCAStrategy().context_window(model.info) == 8 * L
    assert DCAStrategy(max_length=1000).context_window(model.info) == 1000
    sizes = DCAStrategy().sizes(model.info)
    assert (sizes.chunk_size, sizes.local_window, sizes.chunk_len) == (192, 32, 160)
