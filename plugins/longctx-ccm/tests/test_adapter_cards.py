"""Tampered adapter files: card numbers that do not match the tensors, and NaN weights, are AdapterErrors at load.

Both on adapters made here for a tiny model and on copies of the adapter shipped for SmolLM2."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from longctx_llm import AdapterError, Engine
from longctx_llm.model import adapters as files
from longctx_ccm.adapter import CCMAdapter

from ccm_helpers import save_random_adapter


def edit_card(directory, **config):
    card = json.loads((directory / "adapter.json").read_text())
    card["config"].update(config)
    (directory / "adapter.json").write_text(json.dumps(card))


def poison(directory, name: str) -> None:
    """Weights of tensor ``name`` set to NaN, its file rewritten and the card's checksums removed."""
    from safetensors.torch import load_file, save_file

    card = json.loads((directory / "adapter.json").read_text())
    for f in card["files"]:
        tensors = load_file(str(directory / f["name"]))
        if name in tensors:
            tensors[name] = torch.full_like(tensors[name], float("nan"))
            save_file(tensors, str(directory / f["name"]), metadata={"format": "pt"})
        f.pop("sha256", None)
    (directory / "adapter.json").write_text(json.dumps(card))


@pytest.fixture
def tiny(tiny_model):
    return tiny_model("llama", max_positions=512)


@pytest.fixture
def shipped_copy(tmp_path, smollm):
    found = files.shipped("longctx_ccm", "adapters")
    if not found:
        pytest.skip("no CCM adapter ships in this checkout")
    return shutil.copytree(found[0], tmp_path / "shipped"), smollm


@pytest.mark.parametrize("config, message", [
    ({"rank": -1}, "config.rank is -1, but the weight files hold LoRA tensors of rank 4 (valid: 4)"),
    ({"rank": 200_000}, "config.rank is 200000, but the weight files hold LoRA tensors of rank 4 (valid: 4)"),
    ({"n_comp": 10**9}, "config.n_comp is 1000000000, but the weight files hold 4 COMP embeddings (valid: 4)"),
    ({"n_comp": "4"}, "config.n_comp is '4'"),
    ({"alpha": float("inf")}, "config.alpha is inf, expected a finite number > 0"),
    ({"projections": "attention"}, "config.projections is 'attention', expected a list"),
])
def test_card_numbers_are_checked_against_the_tensors_before_allocating(tiny, tmp_path, config, message):
    d = save_random_adapter(tiny, tmp_path / "ccm", n_comp=4, rank=4, comp_tokens=(1, 2, 4))
    edit_card(d, **config)
    t0 = time.perf_counter()
    with pytest.raises(AdapterError) as e:
        CCMAdapter.load(d, tiny.model)
    assert message in str(e.value) and time.perf_counter() - t0 < 5
    engine = Engine(tiny, memory={"name": "ccm", "adapter": str(d)})  # the user's path: before any session
    with pytest.raises(AdapterError, match="config."):
        engine.session("s")
    assert engine.sessions() == []


def test_nan_weights_without_checksums_are_refused(tiny, tmp_path):
    d = save_random_adapter(tiny, tmp_path / "ccm")
    poison(d, "comp_embeddings")
    with pytest.raises(AdapterError, match="tensor 'comp_embeddings' holds .* NaN or infinite value"):
        CCMAdapter.load(d, tiny.model)


@pytest.mark.parametrize("config, message", [
    ({"rank": -1}, "config.rank is -1, but the weight files hold LoRA tensors of rank 32 (valid: 32)"),
    ({"rank": 200_000}, "config.rank is 200000"),
    ({"n_comp": 10**9}, "config.n_comp is 1000000000, but the weight files hold 8 COMP embeddings (valid: 8)"),
])
def test_a_tampered_card_of_the_shipped_adapter_is_refused(shipped_copy, config, message):
    d, smollm = shipped_copy
    edit_card(d, **config)
    with pytest.raises(AdapterError) as e:
        CCMAdapter.load(d, smollm.model, smollm.fingerprint)
    assert message in str(e.value)


def test_the_shipped_adapter_with_nan_weights_is_refused(shipped_copy):
    d, smollm = shipped_copy
    name = "lora.layers.3.self_attn.q_proj.lora_B"
    poison(d, name)
    with pytest.raises(AdapterError, match=f"tensor '{name}' holds"):
        CCMAdapter.load(d, smollm.model, smollm.fingerprint)
