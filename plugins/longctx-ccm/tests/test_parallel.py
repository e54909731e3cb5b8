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
