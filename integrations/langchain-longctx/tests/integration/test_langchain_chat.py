"""ChatLongctx on the real SmolLM2-135M-Instruct: stop, usage, tools, structured output, sessions, concurrency."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableLambda
from langchain_core.runnables.history import RunnableWithMessageHistory
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_longctx import ChatLongctx
from longctx_llm import Engine, InputError, load_pipeline

MODEL_PARAMS = {"model": "smollm2-135m-instruct", "device": "cpu", "dtype": "float32"}  # float32 on CPU: exact greedy


pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[4]


@tool
def magic_function(input: int) -> int:
    """Apply a magic function to an input."""
    return input + 2


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return "sunny"


@pytest.fixture
def llm(smollm):
    return ChatLongctx(**MODEL_PARAMS, max_tokens=12, temperature=0)


def test_stop_is_honoured(llm):
    free = llm.invoke("Count from 1 to 10, separated by commas.")
    assert "4" in free.content, free.content
    stopped = llm.invoke("Count from 1 to 10, separated by commas.", stop=["4"])
    assert stopped.content == free.content[: free.content.index("4")]
    assert stopped.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.text for c in llm.stream("Count from 1 to 10, separated by commas.", stop=["4"]))
    assert streamed == stopped.content


def test_usage_counts_come_from_the_tokenizer(llm):
    msg = llm.invoke("Hello")
    engine = llm.engine
    prompt = engine.render_chat([{"role": "user", "content": "Hello"}])
    usage = msg.usage_metadata
    assert usage["input_tokens"] == len(engine.tokenize(prompt, add_special_tokens=False))
    assert 0 < usage["output_tokens"] <= 12
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert msg.response_metadata["model_name"] == "smollm2-135m-instruct"
    full = None
    for chunk in llm.stream("Hello"):
        full = chunk if full is None else full + chunk
    assert full.usage_metadata == usage
    assert full.content == msg.content


def test_forced_tool_call_is_parsed_with_schema_valid_arguments(llm):
    msg = llm.bind_tools([magic_function], tool_choice="any").invoke(
        "What is the value of magic_function(3)? Use the tool."
    )
    assert [c["name"] for c in msg.tool_calls] == ["magic_function"]
    assert msg.tool_calls[0]["args"] == {"input": 3}
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    # with several tools the model picks one; whichever it picks, the arguments fit that tool's schema
    either = llm.bind_tools([magic_function, get_weather], tool_choice="required").invoke("Weather in Paris?")
    call = either.tool_calls[0]
    assert call["name"] in ("magic_function", "get_weather")
    {"magic_function": magic_function, "get_weather": get_weather}[call["name"]].args_schema.model_validate(call["args"])
    named = llm.bind_tools([magic_function, get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert named.tool_calls[0]["name"] == "get_weather"
    assert isinstance(named.tool_calls[0]["args"]["city"], str)
    streamed = None
    for chunk in llm.bind_tools([get_weather], tool_choice="get_weather").stream("Weather in Paris?"):
        streamed = chunk if streamed is None else streamed + chunk
    assert streamed.tool_call_chunks and streamed.tool_calls[0]["args"] == named.tool_calls[0]["args"]


def test_tool_message_history_reaches_the_model(llm):
    history = [
        HumanMessage("What is magic_function(3)?"),
        AIMessage("", tool_calls=[{"name": "magic_function", "args": {"input": 3}, "id": "c1", "type": "tool_call"}]),
        ToolMessage("5", tool_call_id="c1", name="magic_function"),
    ]
    bound = llm.bind_tools([magic_function])
    reply = bound.invoke(history)
    assert isinstance(reply, AIMessage)
    assert "5" in reply.content, reply.content  # the answer uses the tool's result


def test_structured_output_pydantic_and_unsatisfiable_schema(llm):
    class City(BaseModel):
        """A city."""

        name: str = Field(description="the city's name")
        is_capital: bool = Field(description="whether it is its country's capital")

    out = llm.with_structured_output(City).invoke("Paris is the capital of France. Describe Paris.")
    assert isinstance(out, City) and out.name
    with pytest.raises(InputError, match="cannot be generated"):
        llm.with_structured_output({"title": "X", "type": "object", "properties": {"v": {"oneOf": [
            {"type": "string"}, {"type": "integer"}]}}})


def _history_chain(llm, store):
    return RunnableWithMessageHistory(llm, lambda sid: store.setdefault(sid, InMemoryChatMessageHistory()))


def test_sessions_with_message_history_reuse_the_cache(llm):
    store = {}
    chain = _history_chain(llm, store)
    cfg = {"configurable": {"session_id": "s-hist"}}
    first = chain.invoke("My name is Ada.", config=cfg)
    session = llm.engine.session("s-hist")
    cached_after_first = list(session.cached_ids)
    second = chain.invoke("What is my name?", config=cfg)
    # the second turn extended the first turn's cache instead of re-feeding it
    assert session.cached_ids[: len(cached_after_first) - 2] == cached_after_first[:-2]
    assert len(store["s-hist"].messages) == 4 and session.turns == 2
    # and the cache changes nothing: a stateless call on the same messages answers the same (greedy)
    stateless = llm.invoke([HumanMessage("My name is Ada."), AIMessage(first.content), HumanMessage("What is my name?")])
    assert stateless.content == second.content


def test_thread_id_is_the_langgraph_equivalent(llm):
    llm.invoke("Hi there", config={"configurable": {"thread_id": "t-1"}})
    assert "t-1" in llm.engine.sessions()
    # a LangGraph node calls the model without passing its config on; the thread id still arrives (context var)
    node = RunnableLambda(lambda messages: llm.invoke(messages))
    node.invoke("Hi there", config={"configurable": {"thread_id": "t-2"}})
    assert "t-2" in llm.engine.sessions()
    before = set(llm.engine.sessions())
    llm.invoke("Hi there")  # no id: stateless
    assert set(llm.engine.sessions()) == before


PROMPTS = [
    "Name a fruit.",
    "Name a color.",
    "What is 2 plus 2?",
    "Name an animal.",
    "What is the capital of Spain?",
    "Say hello in French.",
    "Name a planet.",
    "Name a musical instrument.",
]


async def _two_turns(llm, sid, prompt):
    cfg = {"configurable": {"session_id": sid}}
    first = await llm.ainvoke([HumanMessage(prompt)], config=cfg)
    second = await llm.ainvoke([HumanMessage(prompt), first, HumanMessage("Say it again.")], config=cfg)
    return first.content, second.content


@pytest.mark.slow  # 15 s: runs in CI's `pytest -m slow` step, keeping the README's test command under 5 minutes
async def test_eight_concurrent_sessions_match_sequential_runs(smollm):
    llm = ChatLongctx(**MODEL_PARAMS, max_tokens=6, temperature=0)
    sequential = [await _two_turns(llm, f"seq-{i}", p) for i, p in enumerate(PROMPTS)]
    concurrent = await asyncio.gather(*[_two_turns(llm, f"par-{i}", p) for i, p in enumerate(PROMPTS)])
    assert list(concurrent) == sequential
    for i, p in enumerate(PROMPTS):  # each session holds its own conversation and nothing else
        history = llm.engine.session(f"par-{i}").history
        assert [m["content"] for m in history if m["role"] == "user"] == [p, "Say it again."]
        assert llm.engine.session(f"par-{i}").cached_ids[: 10] == llm.engine.session(f"seq-{i}").cached_ids[: 10]


async def test_async_generation_never_blocks_the_event_loop(llm):
    ticks = 0
    done = asyncio.Event()

    async def ticker():
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    chunks = [c async for c in llm.astream("Tell me about the sea.")]
    done.set()
    await task
    assert len(chunks) > 1
    assert ticks > len(chunks)  # the loop kept running between (and during) the model's steps


def test_pipeline_component_builds_a_chat_model_on_the_engine(smollm):
    llm = load_pipeline(ROOT / "examples" / "pipelines" / "langchain.yaml")
    assert isinstance(llm, ChatLongctx) and isinstance(llm.engine, Engine)
    from langchain_longctx.component import LangChainChatComponent

    text = "".join(LangChainChatComponent.respond(llm, "What is the capital of France?", session_id="cli"))
    assert "Paris" in text
    history = llm.engine.session("cli").history
    assert history[0] == {"role": "system", "content": "You are a concise assistant."}
    assert history[-1]["role"] == "assistant" and history[-1]["content"] == text
