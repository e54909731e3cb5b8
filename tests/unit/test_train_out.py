"""`longctx train ccm|rcc --out`: a file or a folder of something else is refused before any work, nothing written."""

from __future__ import annotations

import os

import pytest

from longctx_llm import cli

pytest.importorskip("longctx_ccm")
pytest.importorskip("longctx_rcc")


def train(trainer: str, model, data, out) -> int:
    # the model does not exist: an --out error must come before the model (and the data) is even looked at
    return cli.main(["train", trainer, "--model", str(model), "--data", str(data), "--out", str(out),
                     "--steps", "1", "--device", "cpu"])


def tree(path) -> list[tuple[str, int]]:
    return sorted((os.path.relpath(os.path.join(d, f), path), os.path.getsize(os.path.join(d, f)))
                  for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("trainer", ["ccm", "rcc"])
def test_an_existing_folder_that_is_not_an_adapter_is_refused_first(trainer, tiny_corpus, tmp_path, capsys):
    out = tmp_path / "my-project"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    before = tree(tmp_path)
    assert train(trainer, tmp_path / "no-model", tiny_corpus, out) == 2
    err = capsys.readouterr().err
    assert f"--out: '{out}' exists and is not an adapter directory (no adapter.json; it holds 1 entry, " \
           "e.g. 'thesis.tex'); give a folder that does not exist yet" in err
    assert "Nothing was written" in err and "no-model" not in err
    assert tree(tmp_path) == before and sorted(os.listdir(out)) == ["thesis.tex"]


@pytest.mark.parametrize("trainer", ["ccm", "rcc"])
def test_a_file_as_out_is_a_clear_error(trainer, tiny_corpus, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("precious")
    assert train(trainer, tmp_path / "no-model", tiny_corpus, f) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: '{f}' is a file, not a folder") and "Traceback" not in err
    assert train(trainer, tmp_path / "no-model", tiny_corpus, f / "adapter") == 2
    assert f"--out: '{f}' (above '{f / 'adapter'}') is a file, not a folder" in capsys.readouterr().err
    assert f.read_text() == "precious" and sorted(os.listdir(tmp_path)) == ["docs.jsonl", "notes.txt"]


def test_an_empty_folder_or_an_adapter_folder_is_accepted(tiny_corpus, tmp_path, capsys):
    out = tmp_path / "empty"
    out.mkdir()
    assert train("ccm", tmp_path / "no-model", tiny_corpus, out) == 2
    err = capsys.readouterr().err
    assert "--out" not in err and "no-model" in err  # past the --out check: the missing model is the error now
