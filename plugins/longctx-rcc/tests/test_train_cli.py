"""`longctx train rcc` end to end on a tiny model: the files, the card, resuming from the checkpoint, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from longctx_rcc.compressor import RCCCompressor

from longctx_llm import ModelHandle, cli


def _args(model_dir, data, out, steps):
    return ["train", "rcc", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch", "2", "--window", "64", "--ratio", "16", "--cue", "4", "--span", "8", "--continuation", "16",
            "--encoder-rank", "2", "--slot-rank", "2", "--reader-rank", "2", "--eval-samples", "2",
            "--save-every", "1", "--device", "cpu", "--dtype", "float32", "--warmup", "1"]


def test_train_writes_a_loadable_compressor_and_resumes(tiny_model_dir, tiny_corpus, tmp_path, capsys, caplog):
    out = tmp_path / "rcc"
    assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 2)) == 0
    card = json.loads((out / "adapter.json").read_text())
    assert card["kind"] == "rcc" and card["training"]["steps"] == 2
    assert card["config"]["ratio"] == 16 and card["config"]["window"] == 64
    assert set(card["heldout"]) >= {"gap_closed", "acc_rcc", "acc_full", "samples"}
    assert card["data"]["documents"] == 12 and card["data"]["heldout_documents"] >= 1
    loaded = ModelHandle(str(tiny_model_dir), device="cpu").get()
    first = RCCCompressor.load(out, loaded.model, loaded.fingerprint).tensors()
    # a second run with more steps continues from the checkpoint (not from step 0) and rewrites the files
    with caplog.at_level("WARNING", logger="longctx_llm.train"):
        assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 3)) == 0
    assert "resuming" in caplog.text
    card = json.loads((out / "adapter.json").read_text())
    assert card["training"]["steps"] == 3
    again = RCCCompressor.load(out, loaded.model, loaded.fingerprint).tensors()
    assert any(not (first[k] == again[k]).all() for k in first)  # the third step changed the weights


@pytest.mark.parametrize("bad, match", [
    (["--window", "60"], "not a multiple of --ratio"),
    (["--span", "80"], "must be positive and fit in the context"),
    (["--windows", "1,x"], "comma-separated integers"),
    (["--distill", "-0.1"], "--distill: expected a weight from 0 to 1, got -0.1"),
])
def test_train_rejects_bad_options_before_any_work(tiny_model_dir, tiny_corpus, tmp_path, capsys, bad, match):
    out = tmp_path / "rcc"
    assert cli.main(_args(tiny_model_dir, tiny_corpus, out, 2) + bad) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_keeps_the_last_step_and_the_same_command_resumes(tiny_model_dir, tiny_corpus, tmp_path, monkeypatch,
                                                                  caplog):
    from longctx_llm.train import training

    real = training.Progress.update

    def interrupt_after_step_2(self, step, *a, **kw):
        real(self, step, *a, **kw)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.Progress, "update", interrupt_after_step_2)
    out = tmp_path / "rcc"
    args = _args(tiny_model_dir, tiny_corpus, out, 5) + ["--save-every", "100"]
    with caplog.at_level("WARNING", logger="longctx_llm.train"):
        assert cli.main(args) == 130
    assert "interrupted: step 2 saved" in caplog.text
    assert json.loads((out / "checkpoint" / "adapter.json").read_text())["step"] == 2
    monkeypatch.setattr(training.Progress, "update", real)
    caplog.clear()
    with caplog.at_level("WARNING", logger="longctx_llm.train"):
        assert cli.main(args) == 0
    assert "at step 2" in caplog.text
    assert json.loads((out / "adapter.json").read_text())["training"]["steps"] == 5


def _second_corpus(tmp_path):
    lines = [json.dumps({"text": f"Chapter {i}. " + "In the beginning was the word, and the word was long. " * 15})
             for i in range(10)]
    path = tmp_path / "other.jsonl"
    path.write_text("\n".join(lines))
    return path


def test_train_on_a_weighted_mix_reports_each_file_held_out(tiny_model_dir, tiny_corpus, tmp_path):
    out = tmp_path / "rcc"
    other = _second_corpus(tmp_path)
    args = _args(tiny_model_dir, tiny_corpus, out, 2) + ["--data", str(other), "--data-weights", "1,3", "--distill", "0.5"]
    assert cli.main(args) == 0
    card = json.loads((out / "adapter.json").read_text())
    assert card["training"]["distill"] == 0.5
    assert [s["file"] for s in card["data"]["sources"]] == ["docs.jsonl", "other.jsonl"]
    assert [s["weight"] for s in card["data"]["sources"]] == [0.25, 0.75]
    assert [s["heldout_documents"] for s in card["data"]["sources"]] == [1, 1]
    assert set(card["heldout_by_source"]) == {"docs", "other"}
    assert "gap_closed" in card["heldout_by_source"]["other"]
    assert card["training"]["command"].count("--data ") == 2


def test_bad_data_is_refused_before_the_model_loads(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ["a list"]}\n')
    out = tmp_path / "rcc"
    # the model does not exist: the data error must come first
    assert cli.main(_args(tmp_path / "no-model", bad, out, 2)) == 2
    assert "line 1: field 'text' must be a string, got list" in capsys.readouterr().err
    assert not out.exists()


def test_an_interrupted_and_resumed_run_equals_an_uninterrupted_one(tiny_model_dir, tiny_corpus, tmp_path,
                                                                     monkeypatch):
    from longctx_llm.train import training

    straight = tmp_path / "straight"
    assert cli.main(_args(tiny_model_dir, tiny_corpus, straight, 4) + ["--save-every", "100"]) == 0
    real = training.Progress.update

    def interrupt_after_step_2(self, step, *a, **kw):
        real(self, step, *a, **kw)
        if step == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training.Progress, "update", interrupt_after_step_2)
    resumed = tmp_path / "resumed"
    args = _args(tiny_model_dir, tiny_corpus, resumed, 4) + ["--save-every", "100"]
    assert cli.main(args) == 130
    monkeypatch.setattr(training.Progress, "update", real)
    assert cli.main(args) == 0
    loaded = ModelHandle(str(tiny_model_dir), device="cpu").get()
    a = RCCCompressor.load(straight, loaded.model, loaded.fingerprint).tensors()
    b = RCCCompressor.load(resumed, loaded.model, loaded.fingerprint).tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same data, same steps


def test_the_distilled_loss_reads_the_teacher_at_the_tokens_it_scores(tiny_model):
    from rcc_helpers import random_compressor
    from longctx_rcc.train import decoder_pass, distilled_text_loss, encode_context, text_nll

    loaded = tiny_model("llama", max_positions=256)
    model = loaded.model
    comp = random_compressor(loaded)
    torch.manual_seed(0)
    ctx, text = torch.randint(0, 1000, (2, 32)), torch.randint(0, 1000, (2, 10))
    with torch.no_grad():
        states = encode_context(model, comp, ctx)
        hidden = decoder_pass(model, comp, states, text)
        P, first = states.shape[1], 3
        nll = text_nll(model, hidden, text, P, first).mean()
        torch.testing.assert_close(distilled_text_loss(model, hidden, ctx, text, P, first, 0.0), nll)
        teacher = model(input_ids=torch.cat([ctx, text], 1)).logits[:, 32 + first - 1 : -1].float().log_softmax(-1)
        mine = model.get_output_embeddings()(hidden[:, P + first - 1 : P + 9]).float().log_softmax(-1)
        kl = (teacher.exp() * (teacher - mine)).sum(-1).mean()
        torch.testing.assert_close(distilled_text_loss(model, hidden, ctx, text, P, first, 1.0), kl, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(distilled_text_loss(model, hidden, ctx, text, P, first, 0.5), (nll + kl) / 2,
                                   atol=1e-5, rtol=1e-5)
        # independently: the teacher's distribution for text token j is the model's last logits after ctx + text[:j]
        j = first + 2
        alone = model(input_ids=torch.cat([ctx, text[:, :j]], 1)).logits[:, -1].float().log_softmax(-1)
        torch.testing.assert_close(teacher[:, j - first], alone, atol=1e-5, rtol=1e-5)
