"""`longctx train ccm` end to end on a tiny model: the files, the card, resuming from the checkpoint, bad input."""

from __future__ import annotations

import json

import pytest
from longctx_ccm.adapter import CCMAdapter

from longctx_llm import cli
from longctx_llm.models import ModelHandle


def _args(model_dir, data, out, steps):
    return ["train", "ccm", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch", "2", "--segments", "3", "--seg-len", "16,24", "--comp-tokens", "1,2", "--modes", "concat,merge",
            "--rank", "2", "--targets", "attention,mlp", "--eval-samples", "2", "--save-every", "1",
            "--device", "cpu", "--dtype", "float32", "--warmup", "1"]


def test_train_writes_a_loadable_adapter_and_resumes(tiny_model_dir, tiny_corpus, tmp_path, caplog):
    out = tmp_path / "ccm"
    assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 2)) == 0
    card = json.loads((out / "adapter.json").read_text())
    assert card["kind"] == "ccm" and card["training"]["steps"] == 2
    assert card["data"]["documents"] == 12
    loaded = ModelHandle(str(tiny_model_dir), device="cpu").get()
    first = {k: v.clone() for k, v in CCMAdapter.load(out, loaded.model, loaded.fingerprint).state_dict().items()}
    with caplog.at_level("WARNING", logger="longctx_llm.train"):
        assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 3)) == 0
    assert "resuming" in caplog.text
    assert json.loads((out / "adapter.json").read_text())["training"]["steps"] == 3
    again = CCMAdapter.load(out, loaded.model, loaded.fingerprint).state_dict()
    assert any(not (first[k] == again[k]).all() for k in first)


@pytest.mark.parametrize("bad, match", [
    (["--modes", "stack"], "--modes"),
    (["--segments", "1"], "at least 2"),
    (["--comp-weights", "1,2,3"], "one weight per"),
    (["--chat-share", "0.8", "--fact-share", "0.5"], "together at most 1"),
])
def test_train_rejects_bad_options_before_any_work(tiny_model_dir, tiny_corpus, tmp_path, capsys, bad, match):
    out = tmp_path / "ccm"
    assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 2) + bad) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()
