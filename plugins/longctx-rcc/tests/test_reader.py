"""The reader LoRA (decoder text positions that read slots), hook composition, and a full encoder from a LoRA one."""

import pytest
import torch

from longctx_llm.model import LoRA, hf_adapter
from longctx_rcc.compressor import RCCCompressor
from longctx_rcc.train import encode_context

from rcc_helpers import random_compressor, state


def test_lora_from_a_start_position_equals_an_index(tiny_model):
    model = tiny_model("llama").model
    lora = LoRA(model, ["attention"], 4, 4.0)
    with torch.no_grad():
        for p in lora.b.values():
            p.normal_(0, 0.1)
    ids = torch.randint(0, 1000, (2, 12))
    with torch.no_grad(), hf_adapter.installed(model, lora.hooks(start=5)):
        a = model(input_ids=ids).logits
    with torch.no_grad(), hf_adapter.installed(model, lora.hooks(torch.arange(5, 12))):
        b = model(input_ids=ids).logits
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a[:, :5], plain[:, :5])  # causal: earlier positions are untouched
    assert not torch.allclose(a[:, 5:], plain[:, 5:])


def test_combined_hooks_apply_each_part(tiny_model):
    model = tiny_model("llama").model
    x, y = LoRA(model, ["attention"], 2, 2.0), LoRA(model, ["mlp"], 2, 2.0)
    with torch.no_grad():
        for p in [*x.b.values(), *y.b.values()]:
            p.normal_(0, 0.1)
    seen = []
    record = hf_adapter.ForwardHooks(layer_output=lambda i, h: (seen.append(i), h)[1])
    both = hf_adapter.combined(x.hooks(), None, y.hooks(start=3), record)
    assert set(both.projections) == set(x.projections) | set(y.projections)
    ids = torch.randint(0, 1000, (1, 8))
    with torch.no_grad(), hf_adapter.installed(model, both):
        got = model(input_ids=ids).logits
    assert seen == list(range(len(hf_adapter.decoder_layers(model))))
    assert hf_adapter.combined(None, None) is None
    assert hf_adapter.combined(record) is record
    with torch.no_grad(), hf_adapter.installed(model, x.hooks()):
        only_x = model(input_ids=ids).logits
    assert not torch.allclose(got, only_x)
    torch.testing.assert_close(got[:, :3], only_x[:, :3])  # y starts at position 3


def test_reader_is_used_only_after_slots(tiny_model):
    loaded = tiny_model("llama")
    comp = random_compressor(loaded)
    ids = torch.randint(0, 1000, (1, 40))
    with_reader = state(loaded, comp).forward(ids, all_logits=True)
    with torch.no_grad():
        for p in comp.reader_lora.b.values():
            p.zero_()
    without = state(loaded, comp).forward(ids, all_logits=True)
    torch.testing.assert_close(with_reader[:, :16], without[:, :16])  # window 0 reads no slot: plain model
    assert not torch.allclose(with_reader[:, 16:], without[:, 16:], atol=1e-4)


def test_reader_round_trips_through_files(tiny_model, tmp_path):
    loaded = tiny_model("llama")
    comp = random_compressor(loaded, reader_rank=3)
    comp.save(tmp_path / "c", {"base_model": {}}, dtype=torch.float32)
    back = RCCCompressor.load(tmp_path / "c", loaded.model)
    assert back.config["reader_rank"] == 3 and back.reader_lora is not None
    for k, v in comp.tensors().items():
        torch.testing.assert_close(back.tensors()[k], v)


def test_full_encoder_merged_from_a_lora_encoder_encodes_the_same(tiny_model):
    loaded = tiny_model("llama")
    lora_comp = random_compressor(loaded)
    full = RCCCompressor(loaded.model, encoder="full", ratio=4, window=16)
    full.merge_encoder_lora(lora_comp)
    ids = torch.randint(0, 1000, (2, 32))
    with torch.no_grad():
        a = encode_context(loaded.model, lora_comp, ids)
        b = encode_context(loaded.model, full, ids)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    with pytest.raises(Exception, match="full encoder"):
        lora_comp.merge_encoder_lora(full)
