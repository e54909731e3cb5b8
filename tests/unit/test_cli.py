"""The CLI's cheap commands and its error handling (no model load)."""

import json

from longctx_llm import cli
from longctx_llm.cli import main


def test_validate_ok_and_bad(tmp_path, capsys):
    assert main(["validate", "examples/pipelines/quickstart.yaml"]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy: {name: full, prefill_chunk_size: -3}\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "strategy.prefill_chunk_size" in err and "-3" in err


def test_plugins_lists_builtins(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["plugins"]
    assert {"name": "full", "kind": "strategy"}.items() <= next(r for r in rows if r["name"] == "full").items()
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "DISTRIBUTION" in out and "longctx-llm" in out


def test_schema_is_json(capsys):
    assert main(["schema"]) == 0
    assert "properties" in json.loads(capsys.readouterr().out)


def test_eval_bad_lengths(capsys):
    assert main(["eval", "ppl", "examples/pipelines/quickstart.yaml", "--text", "README.md", "--lengths", "x"]) == 2
    assert "--lengths" in capsys.readouterr().err


def test_unknown_strategy_in_run(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("strategy: nope\n")
    assert main(["run", str(p), "--prompt", "hi"]) == 2
    assert "installed: " in capsys.readouterr().err


def test_every_example_pipeline_validates(capsys):
    from pathlib import Path

    files = sorted(Path("examples/pipelines").glob("*.yaml"))
    assert len(files) >= 6
    for f in files:
        assert main(["validate", str(f)]) == 0, capsys.readouterr().err


def test_help_overview_and_plugin_details(capsys):
    import pytest as _pytest

    with _pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "rcc" in out and "ccm" in out and "longctx run examples/pipelines/quickstart.yaml" in out
    assert cli.main(["plugins", "dca"]) == 0
    out = capsys.readouterr().out
    assert "chunk_size = None" in out and "options:" in out
    assert cli.main(["plugins", "nope"]) == 2
    assert "no installed plugin named 'nope'" in capsys.readouterr().err


def test_validate_checks_that_the_model_exists(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(f"model: {{source: {tmp_path / 'missing-model'}}}\n")
    assert cli.main(["validate", str(p)]) == 2
    assert "missing-model" in capsys.readouterr().err


def test_serve_without_the_server_package_is_one_clear_error(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "longctx_serve.cli", None)  # as if longctx-serve were not installed
    assert main(["serve", "examples/pipelines/quickstart.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: longctx serve needs the server package") and len(err.strip().splitlines()) == 1
    assert "pip install -e integrations/longctx-serve" in err
