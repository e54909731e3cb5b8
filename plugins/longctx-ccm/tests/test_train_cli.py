"""`longctx train ccm` end to end on a tiny model: the files, the card, resuming from the checkpoint, bad input."""

from __future__ import annotations

import json

import pytest
from longctx_ccm.adapter import CCMAdapter

from longctx_llm import ModelHandle, cli


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
    (["--distill", "1.5"], "--distill: expected a weight from 0 to 1, got 1.5"),
    (["--distill", "0.5", "--distill-kinds", "chat,prose"], "--distill-kinds: expected some of text, chat, fact, got 'chat,prose'"),
])
def test_train_rejects_bad_options_before_any_work(tiny_model_dir, tiny_corpus, tmp_path, capsys, bad, match):
    out = tmp_path / "ccm"
    assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 2) + bad) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_train_on_a_mix_file_reports_each_file_held_out(tiny_model_dir, tiny_corpus, tmp_path):
    lines = [json.dumps({"text": f"Chapter {i}. " + "In the beginning was the word, and the word was long. " * 15,
                         "source": f"book{i % 2}/ch{i}"}) for i in range(10)]
    (tmp_path / "other.jsonl").write_text("\n".join(lines))
    mix = tmp_path / "mix.yaml"
    mix.write_text(f"sources:\n  - {{file: {tiny_corpus}, weight: 1}}\n"
                   "  - {file: other.jsonl, weight: 1, group_by: package, size_exponent: 0}\n")
    out = tmp_path / "ccm"
    assert cli.main(_args(tiny_model_dir, mix, out, 2) + ["--chat-share", "0.5", "--distill", "0.5", "--distill-kinds", "chat"]) == 0
    card = json.loads((out / "adapter.json").read_text())
    assert card["training"]["distill"] == 0.5 and card["training"]["distill_kinds"] == ["chat"]
    assert set(card["data"]["sources"][1]["groups"]) == {"book0", "book1"}
    assert card["data"]["sources"][1]["groups"]["book0"]["share"] == 0.25  # exponent 0: groups drawn equally
    assert set(card["heldout_by_source"]) == {"docs", "other"}
    assert "chat_concat_k2" in card["heldout_by_source"]["other"]


@pytest.mark.parametrize("kinds, calls", [("text", 2), ("chat,fact", 0)])
def test_distill_applies_to_the_kinds_it_names(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch, kinds, calls):
    from longctx_ccm import train

    real, seen = train.distilled_loss, []

    def counting(*a, **kw):
        seen.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(train, "distilled_loss", counting)
    args = _args(tiny_model_dir, tiny_corpus, tmp_path / "ccm", 2) + ["--distill", "0.5", "--distill-kinds", kinds]
    assert cli.main(args) == 0  # no chat or fact share: every step is plain text
    assert len(seen) == calls
