"""The real embedded SmolLM2-135M-Instruct on CPU: answers, exactness vs model.generate, README examples, CLI."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longctx_llm import Engine, load_pipeline

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.readme
def test_capital_of_france_mentions_paris(smollm):
    engine = Engine(smollm)
    reply = engine.chat([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=24)
    assert "Paris" in reply.text
    assert reply.finish_reason == "stop" and reply.completion_tokens > 0


def test_loop_equals_model_generate_on_real_model(smollm):
    engine = Engine(smollm)
    text = engine.render_chat([{"role": "user", "content": "Write one sentence about rivers."}])
    ids = torch.tensor([engine.tokenize(text, add_special_tokens=False)])
    ours = engine.chat([{"role": "user", "content": "Write one sentence about rivers."}], max_new_tokens=40)
    ref = smollm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False,
                                eos_token_id=sorted(smollm.eos_token_ids), pad_token_id=smollm.tokenizer.pad_token_id)
    assert ours.token_ids == ref[0, ids.shape[1]:].tolist()[: len(ours.token_ids)]


def test_multi_turn_session_equals_stateless_history(smollm):
    engine = Engine(smollm)
    engine.chat("My name is Alice and I live in Lyon.", session_id="u", max_new_tokens=30)
    reply = engine.chat("Which city do I live in?", session_id="u", max_new_tokens=20)
    history = engine.session("u").history
    assert len(history) == 4
    stateless = Engine(smollm).chat(history[:-1], max_new_tokens=20)
    assert reply.text == stateless.text and reply.prompt_tokens == stateless.prompt_tokens


@pytest.mark.readme
def test_readme_python_quickstart_runs(smollm, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = re.findall(r"```python\n(.+?)\n```", (ROOT / "README.md").read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:  # every Python example in the README runs as written
        exec(compile(block, "README.md", "exec"), {})
    assert "Paris" in capsys.readouterr().out


@pytest.mark.readme
def test_readme_main_command(smollm):
    cmd = next(c for c in re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text()) if "longctx run" in c)
    run_part = cmd.split("&& ", 1)[1].replace(".venv/bin/", f"{BIN}/")
    out = subprocess.run(run_part, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_cli_chat_streams_and_survives_bad_turn(tmp_path):
    out = subprocess.run([str(BIN / "longctx"), "chat", "examples/pipelines/quickstart.yaml"], cwd=ROOT,
                         input="What is the capital of France?\n/reset\nSay hello.\n/exit\n",
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout and "(session reset)" in out.stderr


def test_eval_ppl_json(smollm, capsys):
    from longctx_llm.cli import main

    assert main(["eval", "ppl", "examples/pipelines/quickstart.yaml", "--text", "tests/data/pydocs_tutorial.txt",
                 "--lengths", "256,512", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert [r["length"] for r in res] == [256, 512] and all(r["strategy"] == "full" for r in res)
    assert all(2 < r["ppl"] < 100 for r in res)


@pytest.mark.slow  # 11 s (a pip install): runs in CI's `pytest -m slow` step
def test_example_third_party_plugin_installs_and_runs(tmp_path):
    import shutil

    target = tmp_path / "site"
    src = tmp_path / "src"  # built from a copy: pip leaves build/ and *.egg-info beside the sources it builds
    shutil.copytree(ROOT / "examples/plugins/longctx-example-local", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    listing = subprocess.run([str(BIN / "longctx"), "plugins"], capture_output=True, text=True, env=env)
    assert "example-local" in listing.stdout and "longctx-example-local" in listing.stdout
    pipe = tmp_path / "local.yaml"
    pipe.write_text("strategy: {name: example-local, window: 64}\ngeneration: {max_new_tokens: 24}\n")
    run = subprocess.run([str(BIN / "longctx"), "run", str(pipe), "--prompt", "What is the capital of France?"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "Paris" in run.stdout
