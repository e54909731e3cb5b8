"""The reference implementation's released adapter layout (PEFT LoRA keys + COMP embeddings) loads strictly."""

import pickle

import pytest
import torch

from longctx_llm import AdapterError, Engine
from longctx_ccm.reference import is_reference_layout, load_reference


def reference_state(loaded, rank=4, n=2, rows=None, seed=0):
    torch.manual_seed(seed)
    cfg = loaded.model.config
    H = cfg.hidden_size
    kv = cfg.num_key_value_heads * (H // cfg.num_attention_heads)
    out = {}
    for i in range(cfg.num_hidden_layers):
        for t, o in (("q", H), ("k", kv), ("v", kv), ("o", H)):
            base = f"base_model.model.model.layers.{i}.self_attn.{t}_proj"
            out[f"{base}.lora_A.weight"] = torch.randn(rank, H) * 0.1
            out[f"{base}.lora_B.weight"] = torch.randn(o, rank) * 0.1
    out["base_model.model.model.embed_tokens.comp_embeddings.weight"] = torch.randn(rows or n, H)
    return out


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_reference_adapter_loads_and_runs(tiny_model, tmp_path, fmt):
    lm = tiny_model("llama", max_positions=512)
    d = tmp_path / "llama-7b-no-online-concat_recur-ntok2"
    d.mkdir()
    state = reference_state(lm)
    if fmt == "bin":
        torch.save(state, d / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(d / "model.safetensors"))
    (d / "adapter_config.json").write_text('{"r": 4, "lora_alpha": 16, "target_modules": ["q_proj","k_proj","v_proj","o_proj"]}')
    assert is_reference_layout(d)
    a = load_reference(d, lm.model)
    assert a.lora.rank == 4 and a.lora.scale == 4.0 and a.n_comp == 2 and a.modes == ("concat",)
    key = "layers.1.self_attn.k_proj.lora_B"
    torch.testing.assert_close(a.lora.named_weights()[key], state["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"])
    e = Engine(lm, memory={"name": "ccm", "adapter": str(d), "comp_tokens": 2}, generation={"max_new_tokens": 4})
    e.chat("Hello there.", session_id="s")
    assert e.session("s").memory.slots == 2


def test_merge_adapter_uses_the_comp_half(tiny_model, tmp_path):
    lm = tiny_model("llama")
    d = tmp_path / "llama-2-7b-chat-online-merge_recur-ntok8-sink"
    d.mkdir()
    torch.save(reference_state(lm, n=8, rows=16), d / "pytorch_model.bin")
    a = load_reference(d, lm.model)
    assert a.n_comp == 8 and a.modes == ("merge",) and a.comp_tokens == (8,)


def test_strict_keys(tiny_model, tmp_path):
    lm = tiny_model("llama")
    d = tmp_path / "ref"
    d.mkdir()
    state = reference_state(lm)
    state["base_model.model.lm_head.weight"] = torch.zeros(2, 2)
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(AdapterError, match="unexpected key"):
        load_reference(d, lm.model)
    state = reference_state(lm)
    del state["base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight"]
    torch.save(state, d / "pytorch_model.bin")
    with pytest.raises(AdapterError, match="missing"):
        load_reference(d, lm.model)


def test_another_model_is_refused(tiny_model, tmp_path):
    lm = tiny_model("llama")
    other = tiny_model("llama", hidden_size=32, num_attention_heads=2)
    d = tmp_path / "ref"
    d.mkdir()
    torch.save(reference_state(other), d / "pytorch_model.bin")
    with pytest.raises(AdapterError, match="hidden size 32"):
        load_reference(d, lm.model)


class _Boom:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pickle code ran')",))


def test_a_pickle_with_code_is_refused_not_run(tiny_model, tmp_path):
    lm = tiny_model("llama")
    d = tmp_path / "ref"
    d.mkdir()
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"x": _Boom()}, f)
    with pytest.raises(AdapterError, match="unreadable"):
        load_reference(d, lm.model)
