"""What a new user meets in the first hour: validate agrees with run, help texts, plugin descriptions, chat's model
loading, eval compare without matplotlib."""

from __future__ import annotations

import io
import sys

import pytest

from longctx_llm import cli


def pipeline(tmp_path, tiny_model_dir, strategy="{name: full}", memory="{name: buffer}"):
    path = tmp_path / "p.yaml"
    path.write_text(f"model: {{source: {tiny_model_dir}, device: cpu, dtype: float32}}\nstrategy: {strategy}\n"
                    f"memory: {memory}\n")
    return str(path)


def test_validate_refuses_a_strategy_and_memory_that_do_not_compose(tmp_path, tiny_model_dir, capsys):
    pytest.importorskip("longctx_ccm")
    pytest.importorskip("longctx_dca")
    bad = pipeline(tmp_path, tiny_model_dir, strategy="{name: dca}", memory="{name: ccm}")
    assert cli.main(["validate", bad]) == 2
    err = capsys.readouterr().err
    assert "memory ccm (mode concat) cannot run with strategy 'dca': its cache cannot be edited (compact)" in err
    assert cli.main(["run", bad, "--prompt", "hi"]) == 2  # what run says
    assert "cannot run with strategy 'dca'" in capsys.readouterr().err
    ok = pipeline(tmp_path, tiny_model_dir, memory="{name: ccm}")
    assert cli.main(["validate", ok]) == 0
    assert "ok (strategy full, memory ccm" in capsys.readouterr().out


def test_help_texts_about_serve(capsys, monkeypatch):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.strip().startswith("serve "))
    assert "OpenAI-compatible HTTP server" in line and "pip install" not in line  # installed with the project
    from longctx_llm import registry

    installed = registry.available
    monkeypatch.setattr(registry, "available", lambda kind: [] if kind == "command" else installed(kind))
    with pytest.raises(SystemExit):  # no distribution registers `serve` (longctx_llm.commands)
        cli.main(["--help"])
    line = " ".join(capsys.readouterr().out.split())
    assert "serve OpenAI-compatible HTTP server for a pipeline (needs: pip install -e integrations/longctx-serve)" \
        in line
    assert cli.main(["serve", "p.yaml", "--port", "1"]) == 2
    assert capsys.readouterr().err == ("error: longctx serve needs the server package, which is not installed: "
                                       "pip install -e integrations/longctx-serve\n")
    monkeypatch.undo()
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "(default: None)" not in out
    assert "--port PORT TCP port (default: 8000)" in out
    assert "(default: $LONGCTX_API_KEY)" in out
    assert "--max-stop MAX_STOP most stop strings in one request (default: 16)" in out


@pytest.mark.parametrize("name", ["ccm", "rcc", "streaming", "dca", "full", "buffer"])
def test_plugin_descriptions_are_plain_text(name, capsys):
    code = cli.main(["plugins", name])
    if code == 2 and "no installed plugin" in capsys.readouterr().err:
        pytest.skip(f"{name} is not installed here")
    out = capsys.readouterr().out
    assert code == 0 and "``" not in out and ":class:" not in out
    if name == "ccm":
        assert "Past turns compressed into comp_tokens key/value slots" in out


def test_chat_loads_the_model_before_the_first_prompt(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from longctx_llm import ModelHandle

    events = []
    real_get = ModelHandle.get

    def get(self):
        if not self.is_loaded:
            events.append("load")
        return real_get(self)

    class Stdin(io.StringIO):
        def readline(self, *a):
            events.append("read")
            return super().readline(*a)

        def isatty(self):
            return False

    monkeypatch.setattr(ModelHandle, "get", get)
    monkeypatch.setattr(sys, "stdin", Stdin("hello\n"))
    assert cli.main(["chat", pipeline(tmp_path, tiny_model_dir)]) == 0
    assert events.index("load") < events.index("read")
    assert capsys.readouterr().out.strip()  # the reply


def test_eval_compare_without_matplotlib_says_it_wrote_no_plots(tmp_path, tiny_model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    out = tmp_path / "cmp"
    assert cli.main(["eval", "compare", "--pipelines", pipeline(tmp_path, tiny_model_dir), "--suite", "speed",
                     "--lengths", "16,32", "--decode-tokens", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no plots: matplotlib is not installed (pip install matplotlib)" in printed
    assert not list(out.glob("*.png")) and (out / "results.csv").is_file()
