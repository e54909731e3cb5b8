"""Compressor files: round trip, strict keys, corruption, another model, options against the compressor."""

import json

import pytest
import torch

from longctx_llm import AdapterError, ConfigError, Engine
from longctx_llm.model import adapters as files
from longctx_rcc.compressor import RCCCompressor

from rcc_helpers import random_compressor


def save(loaded, comp, path):
    card = {"base_model": {"name": "tiny", **files.model_facts(loaded.model)}}
    comp.save(path, card, dtype=torch.float32)
    return path


def test_round_trip_is_exact_and_strict(tiny_model, tmp_path):
    lm = tiny_model("llama")
    comp = random_compressor(lm)
    d = save(lm, comp, tmp_path / "c")
    back = RCCCompressor.load(d, lm.model)
    for k, v in comp.tensors().items():
        torch.testing.assert_close(back.tensors()[k], v, atol=0, rtol=0)
    tensors, card = files.load_adapter(d)
    tensors["extra.weight"] = torch.zeros(2)
    with pytest.raises(AdapterError, match="unexpected 1 key"):
        files.check_keys(tensors, {k: tuple(v.shape) for k, v in comp.tensors().items()}, "x")
    del tensors["extra.weight"], tensors["embed_bridge"]
    with pytest.raises(AdapterError, match="missing 1 key"):
        files.check_keys(tensors, {k: tuple(v.shape) for k, v in comp.tensors().items()}, "x")


def test_big_tensors_are_split_across_files_and_joined(tmp_path):
    t = {"big": torch.randn(300, 100), "small": torch.ones(3)}
    files.save_adapter(tmp_path / "a", t, {"kind": "test"}, max_bytes=40_000)
    back, card = files.load_adapter(tmp_path / "a")
    assert card["joined"] == {"big": 3} and len(card["files"]) > 2
    assert torch.equal(back["big"], t["big"]) and torch.equal(back["small"], t["small"])


def test_corrupted_missing_and_foreign_compressors_are_refused(tiny_model, tmp_path):
    lm = tiny_model("llama")
    d = save(lm, random_compressor(lm), tmp_path / "c")
    other = tiny_model("gpt_neox")
    with pytest.raises(AdapterError, match="model_type 'llama'"):
        RCCCompressor.load(d, other.model)
    w = d / json.loads((d / "adapter.json").read_text())["files"][0]["name"]
    w.write_bytes(w.read_bytes()[:-10])
    with pytest.raises(AdapterError, match="corrupted"):
        RCCCompressor.load(d, lm.model)
    w.unlink()
    with pytest.raises(AdapterError, match="missing"):
        RCCCompressor.load(d, lm.model)
    with pytest.raises(AdapterError, match="does not exist"):
        RCCCompressor.load(tmp_path / "nowhere", lm.model)


def test_options_are_checked_against_the_compressor(tiny_model, tmp_path):
    lm = tiny_model("llama")
    d = save(lm, random_compressor(lm, ratio=4, window=16), tmp_path / "c")
    with pytest.raises(ConfigError, match="ratio must divide window"):
        Engine(lm, strategy={"name": "rcc", "ratio": 5, "window": 16})
    e = Engine(lm, strategy={"name": "rcc", "ratio": 4, "window": 32, "compressor": str(d)})
    with pytest.raises(ConfigError, match="trained on \\(16\\)"):
        e.complete("hello", max_new_tokens=1)
    e = Engine(lm, strategy={"name": "rcc", "ratio": 8, "window": 16, "compressor": str(d)})
    with pytest.raises(ConfigError, match="ratio"):
        e.complete("hello", max_new_tokens=1)
    with pytest.raises(AdapterError, match="no trained compressor"):
        Engine(lm, strategy={"name": "rcc", "window": 64}).complete("hello", max_new_tokens=1)
    with pytest.raises(ConfigError, match="below the model's pretraining length 256"):
        Engine(lm, strategy={"name": "rcc", "window": 1024}).complete("hello", max_new_tokens=1)


def test_engine_sessions_rewind_and_restore(tiny_model, tmp_path):
    lm = tiny_model("llama", max_positions=256)
    d = save(lm, random_compressor(lm, ratio=4, window=16), tmp_path / "c")
    strategy = {"name": "rcc", "ratio": 4, "window": 16, "compressor": str(d)}
    e = Engine(lm, strategy=strategy, generation={"max_new_tokens": 5})
    long = "The history of the city of Paris spans many centuries of growth and change. " * 3
    first = e.chat(long, session_id="s")
    s = e.session("s")
    assert s.state.windows >= 2 and s.state.cache_entries < s.state.seen
    e.save_session("s", tmp_path / "saved")
    again = e.chat("Tell me more.", session_id="s")
    f = Engine(lm, strategy=strategy, generation={"max_new_tokens": 5})
    f.load_session(tmp_path / "saved")
    assert f.chat("Tell me more.", session_id="s").token_ids == again.token_ids
    # an edited last turn rewinds into compressed text and equals a fresh session on the edited conversation
    edited = [{"role": "user", "content": long[:-20]}]
    g = Engine(lm, strategy=strategy, generation={"max_new_tokens": 5})
    assert e.chat(edited, session_id="s").token_ids == g.chat(edited, session_id="t").token_ids
    assert first.prompt_tokens > 16
    assert e.context_window == (256 - 16 - 32) * 4 + 16 + 32  # positions: slots, one window, the raw tail (32)
