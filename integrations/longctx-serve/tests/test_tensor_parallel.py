"""``torchrun --nproc-per-node 2 -m longctx_llm.cli serve`` (model.tp: 2, two CPU processes): rank 0 serves HTTP, the
other rank follows its engine calls; the replies of a session's turns, a stream and a completion are those of the
same server over one process. Two processes importing torch and transformers: slow."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def requests(client: httpx.Client, model: str) -> list[str]:
    """A session's two turns, a streamed turn of another session, and a completion: the texts."""
    out = []
    history = [{"role": "user", "content": "Hello there"}]
    for turn in ("Hello there", "Tell me more"):
        if turn != history[-1]["content"]:
            history.append({"role": "user", "content": turn})
        r = client.post("/v1/chat/completions", headers={"X-Session-Id": "s1"},
                        json={"model": model, "messages": history, "max_tokens": 8})
        assert r.status_code == 200, r.text
        text = r.json()["choices"][0]["message"]["content"]
        history.append({"role": "assistant", "content": text})
        out.append(text)
    with client.stream("POST", "/v1/chat/completions", headers={"X-Session-Id": "s2"},
                       json={"model": model, "messages": [{"role": "user", "content": "Stream it"}], "max_tokens": 8,
                             "stream": True}) as r:
        parts = []
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"]
                parts.append(delta.get("content") or "")
    out.append("".join(parts))
    r = client.post("/v1/completions", json={"model": model, "prompt": "Once upon a time", "max_tokens": 6})
    assert r.status_code == 200, r.text
    out.append(r.json()["choices"][0]["text"])
    return out


def test_serve_under_torchrun_answers_as_one_process(tiny_model_dir, tmp_path):
    from fastapi.testclient import TestClient
    from longctx_serve.app import create_app

    from longctx_llm import Engine
    from longctx_llm.config import load_config

    def pipeline(tp: int):
        path = tmp_path / f"tp{tp}.yaml"
        path.write_text(f"model: {{source: {tiny_model_dir}, device: cpu, dtype: float32, tp: {tp}}}\n")
        return path

    model = str(tiny_model_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    env.update(HF_HUB_OFFLINE="1", LONGCTX_PROGRESS="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "longctx_llm.cli", "serve", str(pipeline(2)), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.5)
            served = requests(client, model)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with TestClient(create_app(Engine.from_config(load_config(pipeline(1))))) as client:
        alone = requests(client, model)
    assert all(served) and served == alone
