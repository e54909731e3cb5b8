"""Hostile request bodies: nesting, huge integers, oversized stop/tools lists and bodies get 4xx naming the limit."""

from __future__ import annotations

import json

import httpx
import pytest

API_KEY, MODEL = "test-key", "tiny-llama"  # as in conftest.py
AUTH = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
USER = [{"role": "user", "content": "hi"}]


def post(base_url: str, content, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{base_url}/chat/completions", content=content, headers=AUTH, timeout=timeout)


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:500]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


@pytest.mark.parametrize("where", ["messages", "content"])
def test_a_body_nested_100k_levels_deep_is_a_400(server, where):
    deep = "[" * 100_000 + "]" * 100_000
    inner = deep if where == "messages" else f'[{{"role": "user", "content": {deep}}}]'
    body = f'{{"model": "{MODEL}", "messages": {inner}}}'
    err = error_of(post(server.base_url, body), 400)
    assert err["code"] == "invalid_json" and "deeper than 64 levels" in err["message"]
    medium = "[" * 200 + "]" * 200  # parses, refused by the limit all the same
    err = error_of(post(server.base_url, f'{{"model": "{MODEL}", "messages": {medium}}}'), 400)
    assert "deeper than 64 levels" in err["message"]


def test_an_integer_of_5000_digits_is_a_400_naming_the_field(server):
    body = f'{{"model": "{MODEL}", "messages": {json.dumps(USER)}, "max_tokens": 1{"0" * 4999}}}'
    err = error_of(post(server.base_url, body), 400)
    assert err["message"] == "max_tokens: an integer of 5000 digits (valid: at most 64 digits)"
    assert err["param"] == "max_tokens"
    deep = [{"role": "user", "content": "hi", "name": "x"}]
    body = json.dumps({"model": MODEL, "messages": deep}).replace('"x"', "-" + "9" * 300)
    assert "messages[0].name: an integer of 300 digits" in error_of(post(server.base_url, body), 400)["message"]


def test_10_mb_stop_and_tools_lists_are_refused_with_the_limit(server):
    stop = ["ab"] * 2_500_000  # 15 MB of JSON
    err = error_of(post(server.base_url, json.dumps({"model": MODEL, "messages": USER, "stop": stop})), 400)
    assert err["param"] == "stop" and err["code"] == "limit_exceeded"
    assert "stop: 2500000 stop strings, over this server's limit of 16; `longctx serve --max-stop N`" in err["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    tools = [tool] * 120_000  # 10 MB
    err = error_of(post(server.base_url, json.dumps({"model": MODEL, "messages": USER, "tools": tools})), 400)
    assert err["param"] == "tools" and "120000 tools, over this server's limit of 128" in err["message"]
    assert "--max-tools" in err["message"]
    one = {"type": "function", "function": {"name": "f", "description": "d" * 10_000_000, "parameters": {}}}
    err = error_of(post(server.base_url, json.dumps({"model": MODEL, "messages": USER, "tools": [one]})), 400)
    assert "tools[0]: a tool of 10000" in err["message"]
    assert "limit of 65536; `longctx serve --max-tool-bytes" in err["message"]
    err = error_of(post(server.base_url, json.dumps({"model": MODEL, "messages": USER, "stop": "s" * 600})), 400)
    assert "stop: a stop string of 600 characters, over this server's limit of 512" in err["message"]


@pytest.fixture(scope="module")
def small(engine):
    """A second app over the same engine, with small limits (what `longctx serve --max-...` sets)."""
    from longctx_serve import create_app
    from longctx_serve.limits import RequestLimits
    from longctx_serve.testing import LiveServer

    limits = RequestLimits(max_request_bytes=4096, max_stop=2, max_stop_chars=8, max_tools=1, max_tool_bytes=200)
    with LiveServer(create_app(engine, api_key=API_KEY, model_name=MODEL, limits=limits)) as live:
        yield live


def test_configured_limits_hold_and_requests_within_them_run(small):
    big = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]})
    err = error_of(post(small.base_url, big), 413)
    assert err["code"] == "request_too_large"
    assert "5" in err["message"] and "limit of 4096; `longctx serve --max-request-bytes N`" in err["message"]
    chunks = (big[i:i + 1000].encode() for i in range(0, len(big), 1000))  # no Content-Length: read up to the limit
    assert "more than 4096 bytes" in error_of(post(small.base_url, chunks), 413)["message"]
    ok = {"model": MODEL, "messages": USER, "max_tokens": 2, "stop": ["a", "12345678"]}
    assert post(small.base_url, json.dumps(ok)).status_code == 200
    err = error_of(post(small.base_url, json.dumps({**ok, "stop": ["a", "b", "c"]})), 400)
    assert "3 stop strings, over this server's limit of 2" in err["message"]
    err = error_of(post(small.base_url, json.dumps({**ok, "stop": ["a", "123456789"]})), 400)
    assert err["message"].startswith("stop[1]: a stop string of 9 characters, over this server's limit of 8")
    r = httpx.post(f"{small.base_url}/completions", headers=AUTH, timeout=30,
                   json={"model": MODEL, "prompt": "hi", "stop": ["a", "b", "c"]})
    assert "limit of 2" in error_of(r, 400)["message"]  # the completions endpoint too


def test_serve_options_set_the_limits_and_their_defaults_are_the_apps(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import uvicorn

    from longctx_llm import cli
    from longctx_serve.command import SERVE_LIMITS
    from longctx_serve.limits import RequestLimits

    assert {k: v[0] for k, v in SERVE_LIMITS.items()} == {
        k: v for k, v in vars(RequestLimits()).items() if k in SERVE_LIMITS}
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(f"model: {{source: {tiny_model_dir}, device: cpu, dtype: float32}}\n")
    assert cli.main(["serve", str(pipeline), "--max-stop", "3", "--max-request-bytes", "1000"]) == 0
    limits = seen["app"].state.limits
    assert (limits.max_stop, limits.max_request_bytes, limits.max_tools) == (3, 1000, 128)
    seen.clear()
    assert cli.main(["serve", str(pipeline), "--max-tools", "0"]) == 2
    assert "--max-tools: must be an integer >= 1, got 0" in capsys.readouterr().err and not seen
