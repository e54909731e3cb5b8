"""The server over the batch scheduler: concurrent requests get the replies they get one at a time, and their
decode steps share forwards; --max-batch reaches the engine; a full queue is a 503 with Retry-After."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from longctx_llm.cli import main

API_KEY, MODEL = "test-key", "tiny-llama"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPTS = ["Name a colour.", "Count to five.", "Hello!", "Tell me about the sea.", "What is two plus two?",
           "Write about autumn.", "Say something kind.", "List three fruits."]


def _chat(base_url: str, prompt: str, session: str) -> str:
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 10}
    r = httpx.post(f"{base_url}/chat/completions", json=body, headers={**AUTH, "X-Session-Id": session}, timeout=120)
    assert r.status_code == 200, r.text[:300]
    return r.json()["choices"][0]["message"]["content"]


def test_eight_concurrent_requests_equal_their_serial_replies(peaked_model):
    from longctx_llm import Engine
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    tiny = peaked_model()
    serial = Engine(tiny, batching={"max_batch": 1})
    replies = [serial.chat(p, session_id=f"x{i}", max_new_tokens=10) for i, p in enumerate(PROMPTS)]
    expected = [c.text for c in replies]
    engine = Engine(tiny, batching={"max_batch": 8})
    with LiveServer(create_app(engine, api_key=API_KEY, model_name=MODEL)) as live:
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            got = list(pool.map(lambda ip: _chat(live.base_url, ip[1], f"s{ip[0]}"), enumerate(PROMPTS)))
    assert got == expected
    assert engine.scheduler.steps <= sum(c.completion_tokens - 1 for c in replies) / 2  # rows shared forwards


def test_a_full_queue_is_a_503_with_retry_after(peaked_model):
    from longctx_llm import Engine
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    engine = Engine(peaked_model(), batching={"max_batch": 2, "max_queue": 0})
    held = [engine.stream(f"Prompt {i}", max_new_tokens=40) for i in range(2)]  # both rows taken, nobody reads
    try:
        with LiveServer(create_app(engine, api_key=API_KEY, model_name=MODEL)) as live:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            r = httpx.post(f"{live.base_url}/chat/completions", json=body, headers=AUTH, timeout=60)
    finally:
        for s in held:
            s.close()
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "server_busy" and "max_batch 2" in r.json()["error"]["message"]


@pytest.fixture
def captured(monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    return seen


def test_max_batch_options_reach_the_engine_and_bad_ones_are_refused(tmp_path, tiny_model_dir, captured, capsys):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"model: {{source: {tiny_model_dir}, device: cpu, dtype: float32}}\n")
    assert main(["serve", str(pipeline), "--max-batch", "4", "--max-batch-tokens", "64", "--max-queue", "3"]) == 0
    b = captured["app"].state.engine.batching
    assert (b.max_batch, b.max_batch_tokens, b.max_queue) == (4, 64, 3)
    captured.clear()
    assert main(["serve", str(pipeline), "--max-batch", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-batch: Input should be greater than 0, got 0" in err and "app" not in captured
