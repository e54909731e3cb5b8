"""Adapter interpolation (``python -m longctx_llm.train.interpolate``): the line between two adapters of one lineage,
its card, and refusals for adapters that are not one lineage."""

from __future__ import annotations

import pytest
import torch

from longctx_llm.errors import AdapterError
from longctx_llm.model.adapters import load_adapter, save_adapter
from longctx_llm.train import interpolate as interp

BASE = {"name": "tiny", "sha256": "ab" * 32}


def adapter(path, seed: int, shape=(4, 8), steps: int = 10, config=None, base=BASE, kind="ccm"):
    g = torch.Generator().manual_seed(seed)
    tensors = {"comp_embeddings": torch.randn(2, 8, generator=g),
               "lora.layers.0.q.lora_A": torch.randn(*shape, generator=g)}
    card = {"kind": kind, "base_model": base, "config": config or {"rank": 4}, "training": {"steps": steps},
            "heldout": {"gap_closed": 0.5}}
    save_adapter(path, tensors, card)
    return tensors


def test_the_ends_and_the_middle_of_the_line(tmp_path):
    a = adapter(tmp_path / "a", 0, steps=10)
    b = adapter(tmp_path / "b", 1, steps=20)
    for alpha in (0.0, 0.3, 1.0):
        out = tmp_path / f"m{alpha}"
        assert interp.main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", str(alpha), "--out", str(out)]) == 0
        tensors, card = load_adapter(out)
        for k in a:
            torch.testing.assert_close(tensors[k], (1 - alpha) * a[k] + alpha * b[k])
        assert card["interpolation"]["alpha"] == alpha
        ends = card["interpolation"]
        assert ends["a"]["training"]["steps"] == 10 and ends["b"]["training"]["steps"] == 20
        assert "heldout" not in card and "training" not in card  # the ends' runs and figures are not the result's
        assert card["kind"] == "ccm" and card["config"] == {"rank": 4}


@pytest.mark.parametrize("other, match", [
    (dict(shape=(4, 9)), "different tensors or shapes"),
    (dict(config={"rank": 8}), "configs differ"),
    (dict(base={"name": "other", "sha256": "cd" * 32}), "different base models"),
    (dict(kind="rcc"), "is a 'ccm' adapter"),
])
def test_adapters_of_another_lineage_are_refused(tmp_path, other, match):
    adapter(tmp_path / "a", 0)
    adapter(tmp_path / "b", 1, **other)
    with pytest.raises(AdapterError, match=match):
        interp.interpolate(tmp_path / "a", tmp_path / "b", 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_alpha_outside_0_1_is_a_clear_error(tmp_path, capsys):
    adapter(tmp_path / "a", 0)
    adapter(tmp_path / "b", 1)
    assert interp.main([str(tmp_path / "a"), str(tmp_path / "b"), "--alpha", "1.5", "--out", str(tmp_path / "o")]) == 2
    assert "alpha: 1.5 is not between 0 and 1" in capsys.readouterr().err


def test_out_may_not_be_one_of_the_inputs(tmp_path):
    adapter(tmp_path / "a", 0)
    b = adapter(tmp_path / "b", 1)
    with pytest.raises(AdapterError, match="is one of the adapters it reads"):
        interp.interpolate(tmp_path / "a", tmp_path / "b", 0.5, tmp_path / "b")
    tensors, _ = load_adapter(tmp_path / "b")
    torch.testing.assert_close(tensors["comp_embeddings"], b["comp_embeddings"])
