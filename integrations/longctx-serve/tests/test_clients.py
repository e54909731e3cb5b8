"""The server as a drop-in for OpenAI in LangChain (``ChatOpenAI``) and LlamaIndex (``OpenAILike``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

API_KEY, MODEL = "test-key", "tiny-llama"  # as in conftest.py
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def chat_openai(server):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=server.base_url, api_key=API_KEY, max_tokens=5, temperature=0,
                      max_retries=0)


def test_chat_openai_invoke_and_stream(chat_openai, engine):
    expected = engine.chat([{"role": "user", "content": QUESTION}], max_new_tokens=5, temperature=0)
    msg = chat_openai.invoke(QUESTION)
    assert msg.content == expected.text
    assert msg.usage_metadata["input_tokens"] == expected.prompt_tokens
    assert msg.usage_metadata["output_tokens"] == expected.completion_tokens
    chunks = list(chat_openai.stream(QUESTION))
    assert "".join(c.content for c in chunks) == expected.text


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


def test_chat_openai_bind_tools_returns_tool_calls(chat_openai):
    msg = chat_openai.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert [c["name"] for c in msg.tool_calls] == ["get_weather"]
    assert set(msg.tool_calls[0]["args"]) == {"city"} and msg.tool_calls[0]["id"]


class City(BaseModel):
    name: str
    is_capital: bool


def test_chat_openai_structured_output(chat_openai):
    city = chat_openai.with_structured_output(City, method="json_schema").invoke(QUESTION)
    assert isinstance(city, City)


def test_llama_index_openai_like_chat_and_stream(server, engine):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike

    llm = OpenAILike(model=MODEL, api_base=server.base_url, api_key=API_KEY, is_chat_model=True,
                     context_window=256, max_tokens=5, temperature=0, max_retries=0)
    messages = [ChatMessage(role="user", content=QUESTION)]
    expected = engine.chat([{"role": "user", "content": QUESTION}], max_new_tokens=5, temperature=0).text
    assert llm.chat(messages).message.content == expected
    last = None
    for last in llm.stream_chat(messages):
        pass
    assert last.message.content == expected
