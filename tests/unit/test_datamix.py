"""Training mixes (``longctx train --data`` several files, weights, a mix file): weights honoured, held-out split per
file, groups, bad input refused with our error before any model loads."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from longctx_llm.errors import InputError
from longctx_llm.train import datamix, training


class CharTokenizer:
    """One token per character (ids = code points), end-of-text 0: enough to see where each token came from."""

    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        if isinstance(text, list):
            return {"input_ids": [[ord(c) for c in t] for t in text]}
        return {"input_ids": [ord(c) for c in text]}


def _jsonl(path, docs, gz=False):
    lines = "\n".join(json.dumps(d) for d in docs)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines)
    return path


def _docs(letter, n, length=200, source=None):
    return [{"text": letter * length, **({"source": source(i)} if source else {})} for i in range(n)]


def test_weights_are_honoured_and_each_file_keeps_its_every_10th_document_held_out(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": chr(65 + i % 26) * 50} for i in range(20)])
    b = _jsonl(tmp_path / "b.jsonl.gz", _docs("z", 30, 400), gz=True)
    specs = datamix.parse_data([str(a), str(b)], "1,3")
    train, held, by_source, info = datamix.tokenize_mix(datamix.read_mix(specs), CharTokenizer())
    # held out: documents 9 and 19 of a ('J', 'T'), documents 9, 19, 29 of b
    assert info["sources"][0]["heldout_documents"] == 2 and info["sources"][1]["heldout_documents"] == 3
    held_a = set(by_source["a"].ids.tolist()) - {0}
    assert held_a == {ord("J"), ord("T")}
    train_a = set(train.parts[0].stream.ids.tolist()) - {0}
    assert not train_a & held_a and len(train_a) == 18
    assert [p.weight for p in train.parts] == pytest.approx([0.25, 0.75])
    rows = train.sample(4000, 8, torch.Generator().manual_seed(0))
    from_b = (rows == ord("z")).any(1).float().mean().item()
    assert from_b == pytest.approx(0.75, abs=0.03)
    # no weights: by training tokens (as if concatenated)
    train, _, _, info = datamix.tokenize_mix(datamix.read_mix(datamix.parse_data([str(a), str(b)])), CharTokenizer())
    tokens = [s["train_tokens"] for s in info["sources"]]
    assert [p.weight for p in train.parts] == pytest.approx([t / sum(tokens) for t in tokens])


def test_a_mix_file_groups_by_package_with_a_size_exponent(tmp_path):
    docs = [{"text": "p" * 1000, "source": f"big/doc{i}"} for i in range(30)]
    docs += [{"text": "q" * 250, "source": f"small/doc{i}"} for i in range(30)]
    data = _jsonl(tmp_path / "general.jsonl", docs)
    other = _jsonl(tmp_path / "other.jsonl", _docs("o", 10))
    mix = tmp_path / "mix.yaml"
    mix.write_text("sources:\n  - {file: general.jsonl, weight: 3, group_by: package, size_exponent: 0.5}\n"
                   "  - {file: other.jsonl, weight: 1}\n")
    train, held, by_source, info = datamix.tokenize_mix(datamix.read_mix(datamix.parse_data([str(mix)])),
                                                        CharTokenizer())
    shares = {p.name: p.weight for p in train.parts}
    # big has 4x the tokens of small: with exponent 0.5 it is drawn 2x as often
    assert shares["general:big"] == pytest.approx(2 * shares["general:small"], rel=0.01)
    assert shares["general:big"] + shares["general:small"] == pytest.approx(0.75)
    assert shares["other"] == pytest.approx(0.25)
    assert info["sources"][0]["groups"]["big"]["share"] == pytest.approx(shares["general:big"], abs=1e-5)
    assert set(by_source) == {"general", "other"}
    assert {p.name for p in held.parts} == {"general:big", "general:small", "other"}


def test_one_file_draws_exactly_as_a_plain_token_stream(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"text": chr(65 + i % 26) * 50} for i in range(20)])
    train, held, info = training.load_corpus(str(a), CharTokenizer())
    assert "sources" not in info and info["documents"] == 20 and info["heldout_documents"] == 2
    plain = datamix.TokenStream(train.parts[0].stream.ids)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(train.sample(3, 10, g1), plain.sample(3, 10, g2))


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("", "no text in it"),
    ("not json\n", "line 1: not JSON"),
    ('{"body": "x"}\n', "line 1: expected an object with a 'text' field"),
    ('{"text": "fine"}\n{"text": 42}\n', "line 2: field 'text' must be a string, got int"),
    ('{"text": "a"}\n{"text": "b"}\n', "leave none held out"),
])
def test_bad_data_files_are_refused_with_the_file_and_line(tmp_path, content, match):
    path = tmp_path / "bad.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=match):
        datamix.read_mix(datamix.parse_data([str(path)]))


@pytest.mark.parametrize("args, match", [
    (dict(weights="1,2,3"), "3 weight\\(s\\) for 2 --data file\\(s\\)"),
    (dict(weights="1,-2"), "must be a positive number, got '-2'"),
    (dict(weights="1,x"), "expected a number, got 'x'"),
])
def test_bad_weights_are_refused(tmp_path, args, match):
    a = _jsonl(tmp_path / "a.jsonl", _docs("a", 12))
    b = _jsonl(tmp_path / "b.jsonl", _docs("b", 12))
    with pytest.raises(InputError, match=match):
        datamix.parse_data([str(a), str(b)], args["weights"])


@pytest.mark.parametrize("text, match", [
    ("sources: []\n", "non-empty list"),
    ("- a\n", "one key, 'sources'"),
    ("sources:\n  - {file: a.jsonl, wieght: 1}\n", "unknown key\\(s\\) \\['wieght'\\]"),
    ("sources:\n  - {file: a.jsonl, group_by: colour}\n", "group_by 'colour' is not one of \\['package', 'source'\\]"),
    ("sources:\n  - {file: a.jsonl, size_exponent: 2}\n", "size_exponent: expected a number in \\[0, 1\\], got 2"),
    ("sources:\n  - {file: a.jsonl, weight: 1}\n  - {file: b.jsonl}\n", "every source or to none"),
    ("sources: !!python/object/apply:os.system [echo]\n", "cannot read mix file"),
])
def test_bad_mix_files_are_refused(tmp_path, text, match):
    _jsonl(tmp_path / "a.jsonl", _docs("a", 12))
    _jsonl(tmp_path / "b.jsonl", _docs("b", 12))
    mix = tmp_path / "mix.yaml"
    mix.write_text(text)
    with pytest.raises(InputError, match=match):
        datamix.parse_data([str(mix)])


def test_a_mix_file_is_the_only_data(tmp_path):
    mix = tmp_path / "mix.yml"
    mix.write_text("sources:\n  - {file: a.jsonl}\n")
    with pytest.raises(InputError, match="is the only --data"):
        datamix.parse_data([str(mix), str(mix)])


def test_each_step_draws_the_same_data_whenever_the_run_started():
    r1, g1 = training.step_random(0, 17)
    r2, g2 = training.step_random(0, 17)
    assert r1.random() == r2.random() and torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    _, g3 = training.step_random(0, 18)
    assert not torch.equal(torch.rand(3, generator=training.step_random(0, 17)[1]), torch.rand(3, generator=g3))


def test_a_fresh_optimizer_warms_up_again_from_the_step_an_init_run_starts_at():
    # a run from a shipped adapter at step 3220: the first steps ramp up instead of starting at the peak
    assert training.cosine_lr(3220, 100000, 1.0, 10, 0.0, warm_from=3220) == pytest.approx(0.1)
    assert training.cosine_lr(3229, 100000, 1.0, 10, 0.0, warm_from=3220) == pytest.approx(1.0)
    assert training.cosine_lr(3230, 100000, 1.0, 10, 0.0, warm_from=3220) == pytest.approx(1.0)  # the cosine, at 0
    assert training.cosine_lr(0, 100, 1.0, 10) == pytest.approx(0.1)  # a run from scratch, as before
