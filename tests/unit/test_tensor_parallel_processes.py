"""Tensor parallel over two CPU processes (gloo), started by torchrun: the logits of ``model: {tp: 2}`` equal one
process's for ``full``, ``dca``, ``streaming`` and ``rcc`` (a random compressor), and with LoRA hooks on every
projection (CCM's and RCC's seam);
rank 0 leading an engine keeps the other rank in step through streams, closes, sampling and concurrent requests;
``torchrun ... -m longctx_llm.cli run`` prints the reply one process prints.

Each test starts two Python processes that import torch and transformers (about 30 s on a 2-core machine): slow.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from longctx_llm import cli

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import tp_worker  # noqa: E402


def torchrun(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", LONGCTX_PROGRESS="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_logits_of_two_processes_equal_one_process(tiny_model_dir, tmp_path):
    compressor = ""
    strategies = dict(tp_worker.STRATEGIES)
    try:
        import longctx_rcc  # noqa: F401 - the plugin is optional here
    except ImportError:
        pass
    else:
        compressor = str(tmp_path / "compressor")
        tp_worker.make_compressor(str(tiny_model_dir), compressor)
        strategies["rcc"] = tp_worker.rcc_strategy(compressor)
    torchrun(str(HERE / "tp_worker.py"), "logits", str(tiny_model_dir), str(tmp_path), compressor, cwd=tmp_path)
    for name, spec in strategies.items():
        one = tp_worker.strategy_logits(str(tiny_model_dir), spec, tp=1)
        for rank in (0, 1):
            two = torch.load(tmp_path / f"{name}_rank{rank}.pt")
            assert two.shape == one.shape == (len(tp_worker.PROMPT) + len(tp_worker.DECODE), 49152)
            torch.testing.assert_close(two, one, atol=1e-5, rtol=0, msg=f"{name}, rank {rank}")
    one = tp_worker.lora_logits(str(tiny_model_dir), tp=1)
    for rank in (0, 1):
        torch.testing.assert_close(torch.load(tmp_path / f"lora_rank{rank}.pt"), one, atol=1e-5, rtol=0)


def test_a_follower_stays_in_step_with_the_leader(tiny_model_dir, tmp_path):
    from longctx_llm import load_pipeline

    torchrun(str(HERE / "tp_worker.py"), "protocol", str(tiny_model_dir), str(tmp_path), cwd=tmp_path)
    replies = json.loads((tmp_path / "replies.json").read_text())
    ranks = [json.loads((tmp_path / f"histories_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]  # the same turns everywhere, the sampled one (session b) included
    assert set(ranks[0]) == {"a", "b", "c", "d"}
    assert replies["a3"] == replies["a1"] and replies["c2"] != "<timed out>"
    # the greedy replies are those of one process running the same calls (the sampled ones draw other numbers; c2,
    # the request that waited for session c, reads the session's history once it is free under tp, and before it
    # waits in one process)
    alone = tp_worker.drive(load_pipeline(tp_worker.pipeline(str(tiny_model_dir), {"name": "full"}, 1)).engine)
    for key in ("a1", "a2", "complete", "d", "c1", "a3"):
        assert replies[key] == alone[key], key
    assert replies["score"] == pytest.approx(alone["score"], abs=1e-4)


def test_cli_run_under_torchrun_prints_the_reply_of_one_process(tiny_model_dir, tmp_path, capsys):
    def write(name: str, tp: int) -> Path:
        path = tmp_path / name
        path.write_text(f"model: {{source: {tiny_model_dir}, device: cpu, dtype: float32, tp: {tp}}}\n"
                        "strategy: {name: dca, chunk_size: 48, local_window: 8}\n"
                        "generation: {max_new_tokens: 12}\n")
        return path

    prompt = "Tell me about the history of Paris and its bridges. " * 4  # past DCA's chunk of 48 tokens
    done = torchrun("-m", "longctx_llm.cli", "run", str(write("tp2.yaml", 2)), "--prompt", prompt, cwd=tmp_path)
    assert cli.main(["run", str(write("tp1.yaml", 1)), "--prompt", prompt]) == 0
    alone = capsys.readouterr().out
    assert len(alone.strip()) > 0
    assert done.stdout == alone  # rank 0 prints it once; the follower prints nothing
