"""ChatLongctx without running the model: construction, bad input, message conversion, the pipeline component."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, ValidationError

from langchain_longctx import ChatLongctx
from langchain_longctx.messages import to_core_messages
from longctx_llm import Engine, InputError, load_pipeline, registry

MODEL_PARAMS = {"model": "smollm2-135m-instruct", "device": "cpu", "dtype": "float32"}  # float32 on CPU: exact greedy


ROOT = Path(__file__).resolve().parents[4]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def llm():
    return ChatLongctx(**MODEL_PARAMS, max_tokens=8)


def test_construction_is_lazy_and_validated(llm):
    assert llm._engine is None  # nothing built, nothing loaded
    assert not llm.engine.model_handle.is_loaded  # building the engine still loads nothing
    with pytest.raises(ValidationError, match="api_key"):
        ChatLongctx(api_key="x")  # unknown fields are errors, not silently ignored
    with pytest.raises(ValidationError, match="stop strings must be non-empty"):
        ChatLongctx(stop=[""])
    with pytest.raises(ValidationError, match="needs a 'name'"):
        ChatLongctx(strategy={"chunk_size": 3})
    with pytest.raises(ValidationError, match="max_tokens"):
        ChatLongctx(max_tokens=0)


def test_from_engine_shares_the_engine():
    engine = Engine(MODEL_PARAMS["model"], strategy="full", device="cpu", dtype="float32")
    llm = ChatLongctx.from_engine(engine, max_tokens=4)
    assert llm.engine is engine and llm.strategy == {
        "name": "full", "static_cache": None, "cuda_graphs": None, "compile": False, "lookahead": None, "max_length": None,
        "prefill_chunk_size": 2048,
    }
    assert llm._get_ls_params(stop=["x"]) == {
        "ls_provider": "longctx", "ls_model_type": "chat", "ls_model_name": "smollm2-135m-instruct",
        "ls_max_tokens": 4, "ls_stop": ["x"],
    }


def test_bad_call_options_are_errors_not_drops(llm):
    with pytest.raises(InputError, match=r"unknown call options \['top_n'\] \(valid: max_tokens"):
        llm.invoke("hi", top_n=3)
    with pytest.raises(InputError, match="per-call model 'gpt-4' is not supported"):
        llm.invoke("hi", model="gpt-4")
    with pytest.raises(InputError, match="response_format: .*json_object.* is not supported"):
        llm.invoke("hi", response_format={"type": "json_object"})
    with pytest.raises(InputError, match="generation.temperature"):
        llm.invoke("hi", temperature=-1)


def test_bad_tools_and_schemas_fail_at_bind_time(llm):
    with pytest.raises(InputError, match=r"'mul' is neither a mode .* \(tools: add\)"):
        llm.bind_tools([add], tool_choice="mul")

    @tool
    def pick(choice: int | str) -> str:
        """Pick something."""
        return str(choice)

    with pytest.raises(InputError, match="tool 'pick' cannot be called with tool_choice='any'.*anyOf"):
        llm.bind_tools([pick], tool_choice="any")
    llm.bind_tools([pick])  # auto: the model may still write such a call itself; it is parsed, not forced

    class Person(BaseModel):
        name: str

    with pytest.raises(InputError, match="method: 'xml' is not supported"):
        llm.with_structured_output(Person, method="xml")
    with pytest.raises(InputError, match="needs a schema"):
        llm.with_structured_output(None, method="json_mode")
    with pytest.raises(InputError, match="free-form mapping"):
        llm.with_structured_output({"title": "Tags", "type": "object", "properties": {},
                                    "additionalProperties": {"type": "string"}})


def test_messages_convert_without_drops():
    msgs = to_core_messages([
        SystemMessage("sys"),
        HumanMessage([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]),
        AIMessage([{"type": "text", "text": "t"}, {"type": "tool_use", "id": "1", "name": "add", "input": {}}],
                  tool_calls=[{"name": "add", "args": {"a": 1}, "id": "1", "type": "tool_call"}]),
        ToolMessage("Error: boom", tool_call_id="1", name="add", status="error"),
        ChatMessage(role="human", content="hey"),
    ])
    assert msgs == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "t",
         "tool_calls": [{"id": "1", "type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "Error: boom", "tool_call_id": "1", "name": "add", "status": "error"},
        {"role": "user", "content": "hey"},
    ]
    with pytest.raises(InputError, match=r"messages\[0\]\.content\[1\]: a 'image_url' block cannot be read"):
        to_core_messages([HumanMessage([{"type": "text", "text": "look"},
                                        {"type": "image_url", "image_url": {"url": "http://x"}}])])
    with pytest.raises(InputError, match="'critic' is not valid"):
        to_core_messages([ChatMessage(role="critic", content="x")])


def test_component_is_registered_and_builds_on_the_pipeline_engine():
    from langchain_longctx.component import LangChainChatComponent

    assert registry.get("component", "langchain.chat_model") is LangChainChatComponent
    llm = load_pipeline(ROOT / "examples" / "pipelines" / "langchain.yaml")
    assert isinstance(llm, ChatLongctx) and llm.system_prompt == "You are a concise assistant."
    assert llm.engine.generation.max_new_tokens == 64 and not llm.engine.model_handle.is_loaded
    with pytest.raises(Exception, match="component.colour: unknown field"):
        load_pipeline({"component": {"name": "langchain.chat_model", "colour": "red"}})
