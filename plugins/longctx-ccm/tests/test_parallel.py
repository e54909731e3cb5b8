"""The parallel training forward and the turn-by-turn inference path compute the same slots and the same logits."""

import pytest
import torch

from longctx_llm.model import hf_adapter
from longctx_ccm.parallel import Layout, parallel_hidden

from ccm_helpers import random_adapter, run_turns


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("mode,k", [("concat", 2), ("concat", 1), ("merge", 2)])
def test_parallel_equals_turn_by_turn(tiny_model, arch, mode, k):
    loaded = tiny_model(arch, max_positions=256)
    projections = ("attention", "mlp")
    adapter = random_adapter(loaded, projections=projections)
    lens = (9, 13, 7, 11)
    torch.manual_seed(1)
    segs = [torch.randint(0, 1000, (n,)).tolist() for n in lens]
    ids = torch.tensor([sum(segs, [])])
    layout = Layout(lens, k, mode)
    record = []
    with torch.no_grad():
        hidden = parallel_hidden(loaded.model, adapter, ids, layout, record)
        par_logits = loaded.model.get_output_embeddings()(hidden[0, layout.text_idx[-1]])
    session, memory, logits = run_turns(loaded, adapter, segs, k, mode)
    # the same logits for the last segment, read through the memory
    torch.testing.assert_close(logits, par_logits, atol=2e-4, rtol=1e-4)
    # the same slots: concat keeps every turn's COMP keys/values; merge their running mean (the last block)
    kv = hf_adapter.cache_kv(session.state.cache)
    for (ck, cv), (k_cache, v_cache) in zip(record, kv):
        want_k, want_v = (ck, cv) if mode == "concat" else (ck[:, :, -k:], cv[:, :, -k:])
        torch.testing.assert_close(k_cache[:, :, : memory.slots], want_k, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(v_cache[:, :, : memory.slots], want_v, atol=2e-5, rtol=1e-4)


def _sample(loaded, lens=(9, 13, 7, 11), rows=2):
    torch.manual_seed(3)
    return torch.randint(0, 1000, (rows, sum(lens))), Layout(lens, 2, "concat")


def test_distilled_loss_parts_are_the_nll_and_the_kl_to_the_plain_forward(tiny_model):
    from longctx_ccm.parallel import distilled_loss, segment_nll

    loaded = tiny_model("llama", max_positions=256)
    adapter = random_adapter(loaded, projections=("attention", "mlp"))
    ids, layout = _sample(loaded)
    segments = range(1, len(layout.seg_lens))
    with torch.no_grad():
        hidden = parallel_hidden(loaded.model, adapter, ids, layout)
        loss, ce, kl = distilled_loss(loaded.model, hidden, ids, layout, segments, 0.25, chunk=5)
        torch.testing.assert_close(ce, segment_nll(loaded.model, hidden, ids, layout, segments).mean())
        # the teacher: the model's own next-token distribution with the whole sample as plain text
        plain = loaded.model(input_ids=ids).logits.float().log_softmax(-1)
        mine = loaded.model.get_output_embeddings()(hidden).float().log_softmax(-1)
        starts = [0, 9, 22, 29, 40]
        want = []
        for i in segments:
            t = plain[:, starts[i] : starts[i + 1] - 1]
            s = mine[:, layout.text_idx[i][:-1]]
            want.append((t.exp() * (t - s)).sum(-1))
        torch.testing.assert_close(kl, torch.cat(want, 1).mean(), atol=1e-5, rtol=1e-5)
    assert kl > 0
    torch.testing.assert_close(loss, 0.75 * ce + 0.25 * kl)


def test_distilled_loss_in_chunks_has_the_gradient_of_one_chunk(tiny_model):
    from longctx_ccm.parallel import distilled_loss

    loaded = tiny_model("llama", max_positions=256)
    grads = []
    for chunk in (7, 10_000):
        adapter = random_adapter(loaded, projections=("attention",))
        ids, layout = _sample(loaded)
        hidden = parallel_hidden(loaded.model, adapter, ids, layout)
        loss, _, _ = distilled_loss(loaded.model, hidden, ids, layout, [1, 2, 3], 0.5, chunk=chunk)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None})
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-4)
