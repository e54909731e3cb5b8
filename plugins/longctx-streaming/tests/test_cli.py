"""``longctx eval stream``: per-segment perplexity of a streamed text, as JSON."""

import json
from pathlib import Path

import pytest
import torch

from longctx_llm import cli
from longctx_streaming import segment_perplexity, stream_nll

TEXT = Path(__file__).resolve().parents[3] / "tests" / "data" / "pydocs_tutorial.txt"


def test_segment_perplexity_splits_nll_into_k_token_segments():
    nll = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0])  # 6 tokens -> 5 predictions
    assert segment_perplexity(nll, 2) == [
        {"tokens_seen": 3, "ppl": 1.0},
        {"tokens_seen": 5, "ppl": round(float(torch.e), 4)},
        {"tokens_seen": 6, "ppl": round(float(torch.e**2), 4)},
    ]


def _pipeline(tmp_path, source: str, window: int) -> Path:
    p = tmp_path / "stream.yaml"
    p.write_text(
        f"model: {{source: {source}, device: cpu, dtype: float32}}\n"
        f"strategy: {{name: streaming, sink_tokens: 4, window: {window}}}\n"
    )
    return p


def test_eval_stream_json_on_a_tiny_model(tiny_model, tmp_path, capsys):
    model = tiny_model("llama")
    model.model.save_pretrained(tmp_path / "tiny")
    model.tokenizer.save_pretrained(tmp_path / "tiny")
    pipeline = _pipeline(tmp_path, str(tmp_path / "tiny"), 64)
    rc = cli.main(["eval", "stream", str(pipeline), "--text", str(TEXT), "--tokens", "300", "--every", "100", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["tokens_seen"] for r in out["results"]] == [101, 201, 300]
    assert all(r["ppl"] > 1 for r in out["results"])


def test_eval_stream_bad_arguments(tmp_path, capsys):
    pipeline = _pipeline(tmp_path, "smollm2-135m-instruct", 64)
    assert cli.main(["eval", "stream", str(pipeline), "--text", str(TEXT), "--every", "0"]) == 2
    assert "--every: must be > 0, got 0" in capsys.readouterr().err
    assert cli.main(["eval", "stream", str(pipeline), "--text", str(TEXT), "--tokens", "1"]) == 2
    assert "--tokens: must be >= 2, got 1" in capsys.readouterr().err


@pytest.mark.integration
def test_eval_stream_on_smollm_matches_the_python_api(smollm, tmp_path, capsys):
    from longctx_llm import Engine

    pipeline = _pipeline(tmp_path, "smollm2-135m-instruct", 256)
    args = ["eval", "stream", str(pipeline), "--text", str(TEXT), "--tokens", "1024", "--every", "256", "--json"]
    assert cli.main(args) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["tokens_seen"] for r in results] == [257, 513, 769, 1024]
    assert all(2 < r["ppl"] < 60 for r in results)  # real English under a real model, past the first eviction
    engine = Engine(smollm, strategy={"name": "streaming", "sink_tokens": 4, "window": 256})
    ids = engine.tokenize(TEXT.read_text(), add_special_tokens=False)[:1024]
    assert segment_perplexity(stream_nll(engine, ids, chunk_size=256), 256) == [
        {"tokens_seen": r["tokens_seen"], "ppl": r["ppl"]} for r in results
    ]
    assert all(r["tokens_per_s"] > 0 and r["peak_memory_mib"] > 0 for r in results)
