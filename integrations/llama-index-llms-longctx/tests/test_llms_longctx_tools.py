"""Function calling glue: LlamaIndex tools and tool-call blocks to and from the core's tool format."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.tools import FunctionTool

from longctx_llm import Engine
from longctx_llm.errors import InputError
from llama_index.llms.longctx import LongctxLLM, ToolCallError
from llama_index.llms.longctx.messages import assistant_message, to_engine_messages


def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


TOOL = FunctionTool.from_defaults(fn=get_weather)


@pytest.fixture
def llm(tiny_model):
    return LongctxLLM(engine=Engine(tiny_model("llama", max_positions=512)), max_new_tokens=8)


def tool_history() -> list[ChatMessage]:
    return [
        ChatMessage(role=MessageRole.USER, content="Weather in Paris?"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            blocks=[ToolCallBlock(tool_call_id="call_1", tool_name="get_weather", tool_kwargs={"city": "Paris"})],
        ),
        ChatMessage(
            role=MessageRole.TOOL, content="It is sunny in Paris.", additional_kwargs={"tool_call_id": "call_1"}
        ),
    ]


def test_tool_history_becomes_engine_messages():
    msgs = to_engine_messages(tool_history())
    assert msgs[1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}],
    }
    assert msgs[2] == {"role": "tool", "content": "It is sunny in Paris.", "tool_call_id": "call_1"}


def test_tool_history_reaches_the_model(llm):
    """SmolLM2's template has no tools section: the core's fallback renders calls and results as text."""
    reply = llm.chat_with_tools([TOOL], chat_history=tool_history())
    assert reply.raw["usage"]["prompt_tokens"] > 0
    selections = llm.get_tool_calls_from_response(reply, error_on_no_tool_call=False)
    assert all(s.tool_name == "get_weather" for s in selections)


def test_reply_blocks_become_tool_selections(llm):
    message = assistant_message(
        "Let me check.",
        calls=[{"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}},
               {"id": "c2", "name": "get_weather", "arguments": {"city": "Rome"}}],
        invalid=[{"id": "c3", "name": "fly", "arguments": "{}", "error": "unknown tool 'fly' (tools: get_weather)"}],
    )
    response = ChatResponse(message=message)
    assert message.content == "Let me check."
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(response)] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert message.additional_kwargs["invalid_tool_calls"][0]["name"] == "fly"  # kept, not dropped

    single = llm._validate_chat_with_tools_response(response, [TOOL], allow_parallel_tool_calls=False)
    assert [s.tool_kwargs for s in llm.get_tool_calls_from_response(single)] == [{"city": "Oslo"}]
    moved = single.message.additional_kwargs["invalid_tool_calls"]
    assert [m["id"] for m in moved] == ["c3", "c2"] and "parallel" in moved[1]["error"]


def test_no_tool_call_is_an_error_naming_the_reply(llm):
    response = ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, blocks=[TextBlock(text="It rains.")]))
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ToolCallError, match="It rains"):
        llm.get_tool_calls_from_response(response)


def test_a_forced_call_is_decoded_under_the_schema(llm):
    """Even random weights give a valid call when the call is required: the decoder writes its structure."""
    reply = llm.chat_with_tools([TOOL], user_msg="Weather in Paris?", tool_choice="get_weather")
    (selection,) = llm.get_tool_calls_from_response(reply)
    assert selection.tool_name == "get_weather" and isinstance(selection.tool_kwargs["city"], str)
    assert reply.raw["finish_reason"] == "tool_calls"
    chunks = list(llm.stream_chat_with_tools([TOOL], user_msg="Weather in Paris?", tool_required=True))
    assert llm.get_tool_calls_from_response(chunks[-1])[0].tool_name == "get_weather"


@pytest.mark.integration
def test_predict_and_call_runs_the_tool(smollm):
    llm = LongctxLLM(model_name="smollm2-135m-instruct", device="cpu", dtype="float32", max_new_tokens=16)
    assert llm.metadata.is_function_calling_model
    out = llm.predict_and_call([TOOL], user_msg="What is the weather in Paris?", tool_required=True)
    assert out.sources[0].tool_name == "get_weather"
    assert out.response.startswith("It is sunny in") and "Paris" in out.sources[0].raw_input["kwargs"]["city"]


def test_bad_tools(llm):
    with pytest.raises(InputError, match="tools\\[0\\]"):
        llm.chat([ChatMessage(role="user", content="hi")], tools=[42])
    with pytest.raises(InputError, match="tool_choice"):
        llm.chat_with_tools([TOOL], user_msg="hi", tool_choice="get_time")
    with pytest.raises(InputError, match="only assistant messages"):
        llm.chat([ChatMessage(role="user", blocks=[ToolCallBlock(tool_name="get_weather")])])
