"""Tampered compressor files: card numbers that do not match the tensors, and NaN weights, are AdapterErrors at load.

Both on compressors made here for a tiny model and on copies of the compressor shipped for SmolLM2."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from longctx_llm import AdapterError
from longctx_llm.model import adapters as files
from longctx_rcc.compressor import RCCCompressor

from rcc_helpers import random_compressor


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
def saved(tiny_model, tmp_path):
    lm = tiny_model("llama")
    comp = random_compressor(lm, ratio=4, window=16)
    d = comp.save(tmp_path / "c", {"base_model": {"name": "tiny", **files.model_facts(lm.model)}}, dtype=torch.float32)
    return lm, d


@pytest.mark.parametrize("config, message", [
    ({"encoder_rank": -1}, "config.encoder_rank is -1, but the weight files hold encoder LoRA tensors of rank 4 "
                           "(valid: 4)"),
    ({"encoder_rank": 200_000}, "config.encoder_rank is 200000"),
    ({"slot_rank": 200_000}, "config.slot_rank is 200000, but the weight files hold slot LoRA tensors of rank 4"),
    ({"reader_rank": -1}, "config.reader_rank is -1"),
    ({"window": 10**9}, "config.window is 1000000000, beyond this model's 256 positions (valid: 4-256)"),
    ({"ratio": 0}, "config.ratio 0 and config.window 16 must be integers with 1 <= ratio <= window"),
    ({"encoder": "full"}, "config.encoder is 'full', but the weight files hold no encoder.* tensors"),
    ({"encoder": "gpt"}, "config.encoder is 'gpt' (valid: lora, full)"),
])
def test_card_numbers_are_checked_against_the_tensors_before_allocating(saved, config, message):
    lm, d = saved
    edit_card(d, **config)
    t0 = time.perf_counter()
    with pytest.raises(AdapterError) as e:
        RCCCompressor.load(d, lm.model)
    assert message in str(e.value) and time.perf_counter() - t0 < 5


def test_nan_weights_without_checksums_are_refused(saved):
    lm, d = saved
    poison(d, "embed_bridge")
    with pytest.raises(AdapterError, match="tensor 'embed_bridge' holds 4096 NaN or infinite value"):
        RCCCompressor.load(d, lm.model)


@pytest.fixture
def shipped_copy(tmp_path, smollm):
    found = files.shipped("longctx_rcc", "compressors")
    if not found:
        pytest.skip("no RCC compressor ships in this checkout")
    return shutil.copytree(found[0], tmp_path / "shipped"), smollm


@pytest.mark.parametrize("config, message", [
    ({"encoder_rank": -1}, "config.encoder_rank is -1, but the weight files hold encoder LoRA tensors of rank 16"),
    ({"reader_rank": 200_000}, "config.reader_rank is 200000, but the weight files hold reader LoRA tensors of "
                               "rank 16 (valid: 16)"),
])
def test_a_tampered_card_of_the_shipped_compressor_is_refused(shipped_copy, config, message):
    d, smollm = shipped_copy
    edit_card(d, **config)
    with pytest.raises(AdapterError) as e:
        RCCCompressor.load(d, smollm.model, smollm.fingerprint)
    assert message in str(e.value)


def test_the_shipped_compressor_with_nan_weights_is_refused(shipped_copy):
    d, smollm = shipped_copy
    poison(d, "layer_bridges.7")
    with pytest.raises(AdapterError, match="tensor 'layer_bridges.7' holds"):
        RCCCompressor.load(d, smollm.model, smollm.fingerprint)
