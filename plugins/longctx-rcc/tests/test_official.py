"""The official RCC_Ins_Reconstruction layout (GPT-NeoX; REFERENCE §4) loads strictly from a model directory."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from longctx_llm import AdapterError, Engine
from longctx_llm.model import hf_adapter
from longctx_rcc.official import EMBED_BRIDGE, LAYER_BRIDGE, is_official_layout


def make_checkpoint(tiny_model, tokenizer, path, *, drop=None, extra=None):
    dec = tiny_model("gpt_neox", max_positions=512).model
    torch.manual_seed(1)
    enc = AutoModelForCausalLM.from_config(dec.config)
    H, L = dec.config.hidden_size, dec.config.num_hidden_layers
    legacy = lambda m, k: hf_adapter.legacy_name(m, k)  # noqa: E731 - the checkpoint was written by transformers 4.x
    state = {legacy(dec, k): v for k, v in dec.state_dict().items()}
    state.update({f"gpt_neox.rcc_encoder.{legacy(enc, k)}": v for k, v in enc.state_dict().items()})
    state["gpt_neox.embed_out.weight"] = torch.zeros_like(dec.get_output_embeddings().weight)  # an unused copy
    state[EMBED_BRIDGE] = torch.eye(H) + 0.01 * torch.randn(H, H)
    for i in range(L):
        state[LAYER_BRIDGE.format(i)] = 0.05 * torch.randn(H, H)
    if drop:
        del state[drop]
    if extra:
        state[extra] = torch.zeros(1)
    state = {k: v.contiguous().clone() for k, v in state.items()}
    keys = sorted(state)
    path.mkdir()
    save_file({k: state[k] for k in keys[: len(keys) // 2]}, str(path / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[len(keys) // 2 :]}, str(path / "model-00002-of-00002.safetensors"))
    index = {k: f"model-0000{1 + (i >= len(keys) // 2)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": index}))
    cfg = dec.config.to_dict()
    cfg.pop("_attn_implementation_autoset", None)
    cfg["_attn_implementation"] = None
    (path / "config.json").write_text(json.dumps(cfg))
    tokenizer.save_pretrained(str(path))
    return path, enc


def test_official_checkpoint_loads_and_compresses(tiny_model, tokenizer, tmp_path):
    d, enc = make_checkpoint(tiny_model, tokenizer, tmp_path / "RCC_Ins_Reconstruction")
    assert is_official_layout(d)
    e = Engine(str(d), strategy={"name": "rcc", "ratio": 32, "window": 64, "compressor": str(d)}, device="cpu",
               dtype="float32")
    out = e.complete("word " * 150, max_new_tokens=3)
    assert out.completion_tokens == 3
    comp = e.strategy.compressor_for(e.loaded)
    assert comp.encoder_kind == "full" and comp.window == 2048 and comp.ratio == 32
    torch.testing.assert_close(comp.encoder.state_dict()["gpt_neox.embed_in.weight"], enc.gpt_neox.embed_in.weight)


@pytest.mark.parametrize("change", [{"drop": LAYER_BRIDGE.format(1)}, {"extra": "gpt_neox.rcc_encoder.junk"}])
def test_official_loading_is_strict(tiny_model, tokenizer, tmp_path, change):
    d, _ = make_checkpoint(tiny_model, tokenizer, tmp_path / "ckpt", **change)
    e = Engine(str(d), strategy={"name": "rcc", "ratio": 32, "window": 64, "compressor": str(d)}, device="cpu",
               dtype="float32")
    with pytest.raises(AdapterError, match="missing 1 key|unexpected 1 key"):
        e.complete("hello", max_new_tokens=1)


def test_official_compressor_needs_its_own_decoder(tiny_model, tokenizer, tmp_path):
    d, _ = make_checkpoint(tiny_model, tokenizer, tmp_path / "ckpt")
    other = tiny_model("gpt_neox", max_positions=512, seed=5)
    e = Engine(other, strategy={"name": "rcc", "ratio": 32, "window": 64, "compressor": str(d)})
    with pytest.raises(AdapterError, match="load the model from that directory"):
        e.complete("hello", max_new_tokens=1)
