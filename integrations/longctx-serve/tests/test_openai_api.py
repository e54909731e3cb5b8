"""The OpenAI endpoints through the official ``openai`` client and raw HTTP (errors, auth, SSE format)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

API_KEY, MODEL = "test-key", "tiny-llama"  # as in conftest.py

USER = [{"role": "user", "content": "What is the capital of France?"}]
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_chat_matches_the_engine_in_process(client, engine):
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=5, temperature=0)
    expected = engine.chat(USER, max_new_tokens=5, temperature=0)
    choice = r.choices[0]
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    assert choice.message.role == "assistant" and choice.message.content == expected.text
    assert choice.finish_reason == expected.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream_is_the_same_reply_in_chunks(client):
    whole = client.chat.completions.create(model=MODEL, messages=USER, max_completion_tokens=6)
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=USER, max_completion_tokens=6, stream=True, stream_options={"include_usage": True}
    ))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_sse_wire_format_ends_with_done(server):
    body = {"model": MODEL, "messages": USER, "stream": True, "max_tokens": 3}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, headers=AUTH, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "chat.completion.chunk"


def test_stop_sequences_and_seeded_sampling(client, engine):
    free = engine.chat(USER, max_new_tokens=6, temperature=0).text
    stop = free[2:5]
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=0, stop=[stop])
    assert r.choices[0].message.content == free[: free.index(stop)] and r.choices[0].finish_reason == "stop"
    a, b = (client.chat.completions.create(model=MODEL, messages=USER, max_tokens=6, temperature=1.0, top_p=0.9,
                                           seed=7).choices[0].message.content for _ in range(2))
    assert a == b


def test_completions_plain_and_streamed(client, engine):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4)
    expected = engine.complete("Once upon a time", max_new_tokens=4)
    assert r.object == "text_completion" and r.choices[0].text == expected.text
    assert r.usage.prompt_tokens == expected.prompt_tokens
    parts = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=4, stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices) == expected.text


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_json_response_formats(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "capital": {"type": "boolean"}},
              "required": ["city", "capital"]}  # (a random model writes no numbers: a 422 names the value)
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, response_format={
        "type": "json_schema", "json_schema": {"name": "City", "schema": schema}})
    value = json.loads(r.choices[0].message.content)
    assert set(value) == {"city", "capital"} and isinstance(value["capital"], bool)
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4,
                                       response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_forced_tool_call_comes_back_as_tool_calls(client):
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                            "required": ["city"]}}}
    r = client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, tools=[tool],
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and call.type == "function"
    assert call.function.name == "get_weather" and set(json.loads(call.function.arguments)) == {"city"}
    # the call and its result go back in the next request
    history = [*USER, r.choices[0].message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "Sunny."}]
    again = client.chat.completions.create(model=MODEL, messages=history, max_tokens=3, tools=[tool])
    assert again.usage.prompt_tokens > r.usage.prompt_tokens


def test_prompt_over_the_window_is_a_400_with_our_message(client):
    long = [{"role": "user", "content": "word " * 400}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=2)
    err = info.value.body
    assert info.value.code == "context_length_exceeded" and "256-token window" in err["message"]
    with pytest.raises(openai.BadRequestError):  # the streaming path answers the same before it starts
        client.chat.completions.create(model=MODEL, messages=long, max_tokens=2, stream=True)


@pytest.mark.parametrize(
    "body, status, needle",
    [
        ({"model": "gpt-4o", "messages": USER}, 404, "not served here (valid: tiny-llama)"),
        ({"model": MODEL, "messages": USER, "temperature": 5}, 400, "temperature"),
        ({"model": MODEL, "messages": USER, "n": 2}, 400, "n=2 (valid: 1)"),
        ({"model": MODEL, "messages": USER, "frobnicate": 1}, 400, "frobnicate: unknown field"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "'wizard' is not a valid role"),
        ({"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "text-only"),
        ({"model": MODEL, "messages": USER, "tool_choice": "lookup"}, 400, "tools: none"),
        ({"model": MODEL, "messages": USER, "response_format": {"type": "yaml"}}, 400, "response_format"),
        ({"model": MODEL, "messages": USER, "stop": [""]}, 400, "stop"),
    ],
)
def test_bad_requests_get_openai_errors(server, body, status, needle):
    r = httpx.post(f"{server.base_url}/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]


def test_malformed_json_and_unknown_routes(server):
    r = httpx.post(f"{server.base_url}/chat/completions", content=b"{not json", headers=AUTH, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(f"{server.base_url}/nothing-here", headers=AUTH, timeout=10)
    assert r.status_code == 404 and "error" in r.json()


def test_api_key_is_required(server):
    bad = openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    r = httpx.get(f"{server.base_url}/models", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_a_failing_engine_call_is_an_error_and_the_server_goes_on(client, engine, monkeypatch):
    real = engine.stream_chat

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "stream_chat", broken)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2)
    assert "RuntimeError: boom" in info.value.body["message"]

    class Midway:  # a TextStream that fails after its first delta (the response has started)
        completion = None

        def __init__(self, stream):
            self.stream, self.sent = stream, False

        def __iter__(self):
            return self

        def __next__(self):
            if self.sent:
                raise RuntimeError("midway")
            self.sent = True
            return next(self.stream)

        def close(self):
            self.stream.close()

    def fails_midway(*args, **kwargs):
        return Midway(real(*args, **kwargs))

    monkeypatch.setattr(engine, "stream_chat", fails_midway)
    with pytest.raises(openai.APIError, match="midway"):
        list(client.chat.completions.create(model=MODEL, messages=USER, max_tokens=4, stream=True))
    monkeypatch.setattr(engine, "stream_chat", real)
    assert client.chat.completions.create(model=MODEL, messages=USER, max_tokens=2).choices[0].message.content
