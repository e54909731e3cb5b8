"""LongctxMemory: the BaseMemory API, its tie to an engine session, and chat engines that keep state across turns."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine import SimpleChatEngine

from longctx_llm import Engine, load_pipeline
from longctx_llm.errors import ConfigError, InputError
from llama_index.llms.longctx import SESSION_KEY, LongctxLLM
from llama_index.memory.longctx import LongctxChatEngine, LongctxMemory


def msg(role: str, text: str) -> ChatMessage:
    return ChatMessage(role=role, content=text)


@pytest.fixture
def engine(tiny_model):
    return Engine(tiny_model("llama", max_positions=512), generation={"max_new_tokens": 8})


def test_put_get_set_reset(engine):
    memory = LongctxMemory.from_defaults(engine=engine, session_id="a", chat_history=[msg("user", "hi")])
    memory.put(msg("assistant", "hello"))
    assert [m.content for m in memory.get_all()] == ["hi", "hello"]
    got = memory.get(input="ignored", initial_token_count=0)
    assert [m.content for m in got] == ["hi", "hello"]
    assert {m.additional_kwargs[SESSION_KEY] for m in got} == {"a"}
    assert all(SESSION_KEY not in m.additional_kwargs for m in memory.get_all())  # stored untagged
    memory.put(got[0])  # a tagged message put back is stored untagged
    assert SESSION_KEY not in memory.get_all()[-1].additional_kwargs
    memory.set([msg("user", "again")])
    assert [m.content for m in memory.get_all()] == ["again"]
    memory.reset()
    assert memory.get_all() == []


def test_async_twins(engine):
    memory = LongctxMemory.from_defaults(engine=engine)

    async def run():
        await memory.aput(msg("user", "one"))
        await memory.aput_messages([msg("assistant", "two"), msg("user", "three")])
        everything = await memory.aget_all()
        recent = await memory.aget()
        await memory.aset([msg("user", "four")])
        after_set = await memory.aget_all()
        await memory.areset()
        return everything, recent, after_set, await memory.aget_all()

    everything, recent, after_set, after_reset = asyncio.run(run())
    assert [m.content for m in everything] == ["one", "two", "three"] == [m.content for m in recent]
    assert [m.content for m in after_set] == ["four"] and after_reset == []


def test_memory_follows_its_engine_session(engine):
    llm = LongctxLLM(engine=engine)
    memory = LongctxMemory.from_defaults(llm=llm, session_id="s")
    memory.put(msg("user", "Tell me about rivers."))
    reply = llm.chat(memory.get())  # tagged messages: the turn runs in session "s"
    memory.put(reply.message)
    assert engine.session("s").turns == 1 and len(memory.get_all()) == 2
    engine.reset_session("s")  # e.g. /reset in `longctx chat`
    assert memory.get_all() == []
    memory.put(msg("user", "New start"))
    memory.reset()  # resets the model-side state too
    assert "s" not in engine.sessions() and memory.get_all() == []


def test_stock_simple_chat_engine_keeps_state_across_turns(engine):
    llm = LongctxLLM(engine=engine)
    memory = LongctxMemory.from_defaults(llm=llm, session_id="chat")
    chat = SimpleChatEngine.from_defaults(llm=llm, memory=memory, system_prompt="Be brief.")
    first = chat.chat("Tell me about rivers.")
    session = engine.session("chat")
    cached_after_first = len(session.cached_ids)
    second = chat.chat("And lakes?")
    streamed = chat.stream_chat("And seas?")
    text = "".join(streamed.response_gen)
    assert session.turns == 3
    assert len(session.cached_ids) > cached_after_first
    history = memory.get_all()
    assert [m.role for m in history] == [MessageRole.USER, MessageRole.ASSISTANT] * 3
    replies = [history[1].content, history[3].content, history[5].content]
    assert replies == [first.response, second.response, text.strip()]
    # what the session last saw is the whole conversation: system prompt, three user turns, replies
    assert [m["role"] for m in session.history] == ["system"] + ["user", "assistant"] * 3


def test_chat_engine_sessions_are_separate(engine):
    chat = LongctxChatEngine.from_engine(engine, session_id="alice")
    bob = chat.for_session("bob")
    assert chat.for_session("bob") is bob and bob.for_session("alice") is chat
    chat.chat("I like rivers.")
    bob.chat("I like mountains.")
    assert [m.content for m in chat.chat_history][0] == "I like rivers."
    assert [m.content for m in bob.chat_history][0] == "I like mountains."
    assert engine.session("alice").turns == 1 and engine.session("bob").turns == 1
    chat.reset()
    assert chat.chat_history == [] and "alice" not in engine.sessions() and "bob" in engine.sessions()


def test_async_chat_engine_turns(engine):
    chat = LongctxChatEngine.from_engine(engine, session_id="async")

    async def run():
        first = await chat.achat("Tell me about rivers.")
        streamed = await chat.astream_chat("And lakes?")
        text = "".join([d async for d in streamed.async_response_gen()])
        return first, text

    first, text = asyncio.run(run())
    assert engine.session("async").turns == 2
    assert [m.content for m in chat.chat_history][1] == first.response


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "engine"),
        ({"llm": "not an llm"}, "str"),
        ({"session_id": ""}, "session_id"),
        ({"token_limit": 100}, "token_limit"),
    ],
)
def test_bad_construction(engine, kwargs, fragment):
    if "session_id" in kwargs:
        kwargs["engine"] = engine
    with pytest.raises(ConfigError, match=fragment):
        LongctxMemory.from_defaults(**kwargs)


def test_bad_calls(engine):
    memory = LongctxMemory.from_defaults(engine=engine)
    with pytest.raises(InputError, match="ChatMessage"):
        memory.put("hello")
    with pytest.raises(InputError, match=r"messages\[1\]"):
        memory.set([msg("user", "ok"), {"role": "user", "content": "dict"}])
    with pytest.raises(InputError, match="token_limit"):
        memory.get(token_limit=5)


def test_chat_engine_pipeline_options_are_checked(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("component: {name: llama_index.chat_engine, persona: pirate}\n")
    with pytest.raises(ConfigError, match="persona"):
        load_pipeline(bad)


@pytest.mark.integration
def test_chat_engine_pipeline_remembers_across_turns(smollm):
    from pathlib import Path

    from longctx_llm.pipeline import load_pipeline_with_component

    yaml_file = Path(__file__).resolve().parents[3] / "examples" / "pipelines" / "llama_index_chat_engine.yaml"
    chat, component = load_pipeline_with_component(yaml_file)
    assert isinstance(chat, LongctxChatEngine)
    "".join(component.respond(chat, "Remember this: the secret word is banana.", session_id="u1"))
    answer = "".join(component.respond(chat, "What is the secret word?", session_id="u1"))
    assert "banana" in answer.lower()
    other = "".join(component.respond(chat, "What is the secret word?", session_id="u2"))
    assert "banana" not in other.lower()  # another session knows nothing of u1
    assert chat.engine.session("u1").turns == 2
