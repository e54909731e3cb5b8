"""Ray Serve scale-out: 2 CPU replicas, every session served by one replica, replies equal to one process's."""

from __future__ import annotations

import socket

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

pytestmark = pytest.mark.slow

MODEL = "tiny-llama"
SESSIONS = [f"user-{i}" for i in range(6)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pipeline(model_dir) -> dict:
    return {"model": {"source": str(model_dir), "device": "cpu"}, "strategy": {"name": "full"},
            "memory": {"name": "buffer"}, "generation": {"max_new_tokens": 6, "temperature": 0.0}}


def _conversations(client, header_of):
    """Two turns per session (the client resends the history); -> {session: [(reply, replica), ...]}."""
    out = {}
    for sid in SESSIONS:
        history, turns = [], []
        for question in (f"Hello, I am {sid}.", "What did I just say?"):
            history.append({"role": "user", "content": question})
            raw = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=history, max_tokens=6, extra_headers={"X-Session-Id": sid})
            reply = raw.parse().choices[0].message.content
            turns.append((reply, header_of(raw.headers)))
            history.append({"role": "assistant", "content": reply})
        out[sid] = turns
    return out


def test_sessions_stay_on_one_replica_and_replies_match_one_process(tiny_model_dir):
    from longctx_serve import create_app
    from longctx_serve.ray_app import replica_index, run
    from longctx_serve.testing import LiveServer
    from openai import OpenAI
    from ray import serve

    from longctx_llm import Engine
    from longctx_llm.config import parse_config

    pipeline = _pipeline(tiny_model_dir)
    with LiveServer(create_app(Engine.from_config(parse_config(pipeline)), model_name=MODEL)) as live:
        single = OpenAI(base_url=live.base_url, api_key="-", max_retries=0, timeout=60)
        expected = _conversations(single, lambda h: None)

    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run(pipeline, 2, port=port, model_name=MODEL, num_cpus=1)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=60)
        got = _conversations(client, lambda h: h.get("x-replica"))

        used = set()
        for sid, turns in got.items():
            replicas = {replica for _, replica in turns}
            assert replicas == {f"replica-{replica_index(sid, 2)}"}, (sid, turns)  # one replica, the hashed one
            used |= replicas
            assert [reply for reply, _ in turns] == [reply for reply, _ in expected[sid]], sid
        assert used == {"replica-0", "replica-1"}

        # the body's `user` field routes like the header; stateless requests are spread over both replicas
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, user=SESSIONS[0])
        assert raw.headers["x-replica"] == f"replica-{replica_index(SESSIONS[0], 2)}"
        stateless = {client.models.with_raw_response.list().headers["x-replica"] for _ in range(4)}
        assert stateless == {"replica-0", "replica-1"}

        # streaming passes through the router chunk by chunk
        stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=4, stream=True, extra_headers={"X-Session-Id": "s"})
        assert [c for c in stream if c.choices]  # at least one content chunk; ends with [DONE]
    finally:
        serve.shutdown()
        ray.shutdown()
