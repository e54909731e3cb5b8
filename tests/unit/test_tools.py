"""Tool specs, the fallback tool prompt, tool-call parsing and schema-guided JSON (longctx_llm.chat.tools / .guided)."""

from __future__ import annotations

import copy
import json

import pytest

from longctx_llm import Engine, InputError
from longctx_llm.chat import guided, tools
from longctx_llm.runtime.templates import render

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
    },
}
WEATHER = {"name": "weather", "description": "Weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def test_normalize_tools_accepts_openai_and_bare_specs_and_rejects_bad_ones():
    specs = tools.normalize_tools([ADD, WEATHER])
    assert [s.name for s in specs] == ["add", "weather"]
    assert specs[0].as_openai() == ADD
    titled = {**WEATHER, "parameters": {**WEATHER["parameters"], "title": "Weather"}}
    assert len(tools.normalize_tools([WEATHER, titled])) == 1  # one tool given twice (class + its schema)
    with pytest.raises(InputError, match="two different tools are named 'add'"):
        tools.normalize_tools([ADD, {**WEATHER, "name": "add"}])
    with pytest.raises(InputError, match="'bad name!' is not a valid tool name"):
        tools.normalize_tools([{"name": "bad name!"}])
    with pytest.raises(InputError, match="must be a JSON schema of type object"):
        tools.normalize_tools([{"name": "f", "parameters": {"type": "string"}}])
    with pytest.raises(InputError, match="'retrieval' is not callable"):
        tools.normalize_tools([{"type": "retrieval"}])


def test_tool_choice_modes_and_names():
    specs = tools.normalize_tools([ADD, WEATHER])
    assert tools.normalize_tool_choice(None, specs) == "auto"
    assert tools.normalize_tool_choice("any", specs) == "required"
    assert tools.normalize_tool_choice(True, specs) == "required"
    assert tools.normalize_tool_choice({"type": "function", "function": {"name": "add"}}, specs) == "add"
    assert tools.normalize_tool_choice({"type": "tool", "name": "weather"}, specs) == "weather"
    with pytest.raises(InputError, match=r"'mul' is neither a mode .* \(tools: add, weather\)"):
        tools.normalize_tool_choice("mul", specs)
    with pytest.raises(InputError, match="'required' needs at least one tool"):
        tools.normalize_tool_choice("any", [])


def test_parse_tool_calls_reads_tags_bare_json_and_reports_bad_calls():
    specs = tools.normalize_tools([ADD, WEATHER])
    r = tools.parse_tool_calls(
        'Sure.\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
        '<tool_call>{"name": "weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}', specs
    )
    assert r.content == "Sure."
    assert [(c["name"], c["arguments"]) for c in r.calls] == [("add", {"a": 1, "b": 2}), ("weather", {"city": "Oslo"})]
    assert all(c["id"].startswith("call_") for c in r.calls) and r.calls[0]["id"] != r.calls[1]["id"]
    bare = tools.parse_tool_calls('{"name": "add", "parameters": {"a": 3, "b": 4}}', specs)
    assert bare.calls[0]["arguments"] == {"a": 3, "b": 4} and bare.content == ""
    bad = tools.parse_tool_calls('<tool_call>{"name": "mul", "arguments": {}}</tool_call><tool_call>{oops</tool_call>',
                                 specs)
    assert not bad.calls
    assert "unknown tool 'mul' (tools: add, weather)" in bad.invalid[0]["error"]
    assert bad.invalid[1]["error"].startswith("invalid JSON")
    plain = tools.parse_tool_calls('{"answer": 42}', specs)  # JSON that is not a call stays text
    assert plain.content == '{"answer": 42}' and not plain.calls and not plain.invalid


def test_holdback_streams_prose_and_keeps_the_call():
    hb = tools.ToolCallHoldback()
    shown = [hb.push(d) for d in ["Let me ", "check. <tool", "_call>", '{"name": "add"}', "</tool_call>"]]
    assert "".join(shown) == "Let me check. "
    assert hb.finish() == '<tool_call>{"name": "add"}</tool_call>'
    hb = tools.ToolCallHoldback()
    assert hb.push('{"name"') == "" and hb.finish() == '{"name"'


def test_fallback_rendering_of_tools_calls_and_results(tokenizer):
    specs = tools.normalize_tools([ADD])
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add", "status": "error"},
    ]
    msgs, native = tools.prepare_messages(tokenizer, messages, specs, "add")
    assert native is None  # SmolLM2's template has no tools section
    text = render(tokenizer, msgs)
    assert "Be brief.\n\nYou can call the following tools" in text and '"name": "add"' in text
    assert "You must call the tool add now." in text
    assert '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>' in text
    assert '<|im_start|>user\n<tool_response name="add" id="c1" status="error">\n3\n</tool_response>' in text


def test_native_tools_go_through_a_template_that_has_them(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (
        "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }}{% endfor %}{% endif %}\n"
        "{% endfor %}assistant:"
    )
    msgs, native = tools.prepare_messages(
        tok, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c", "function": {"name": "add", "arguments": '{"a": 1}'}}]},
            {"role": "tool", "content": "1", "tool_call_id": "c"}], tools.normalize_tools([ADD]), "auto")
    assert native == [ADD]
    text = render(tok, msgs, tools=native)
    assert text.startswith("TOOLS:add;") and "CALL add" in text and "tool: 1" in text
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


def test_check_schema_names_what_cannot_be_generated():
    guided.check_schema({"type": "object", "properties": {"a": {"anyOf": [{"type": "string"}, {"type": "null"}]}}})
    with pytest.raises(InputError, match=r"schema at \$\.v: anyOf with 2 non-null branches"):
        guided.check_schema({"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}})
    with pytest.raises(InputError, match="free-form mapping"):
        guided.check_schema({"type": "object", "additionalProperties": {"type": "string"}})
    with pytest.raises(InputError, match="unresolvable \\$ref"):
        guided.check_schema({"$ref": "#/$defs/Missing"})
    with pytest.raises(InputError, match="empty enum"):
        guided.check_schema({"enum": []})


def test_guided_json_is_schema_valid_even_from_random_weights(tiny_model):
    engine = Engine(tiny_model("llama"), strategy="full")
    schema = {
        "type": "object",
        "$defs": {"Pet": {"type": "object", "properties": {"kind": {"enum": ["cat", "dog"]}, "ok": {"type": "boolean"}}}},
        "properties": {
            "name": {"type": "string"},
            "pet": {"$ref": "#/$defs/Pet"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
            "version": {"const": 1},
            "note": {"type": ["string", "null"]},
        },
    }
    prompt = engine.render_chat([{"role": "user", "content": "Describe a person."}])
    value, text, _ = guided.guided_json(engine, prompt, schema, max_value_tokens=4)
    assert json.loads(text) == value
    assert set(value) == {"name", "pet", "tags", "version", "note"}
    assert value["pet"]["kind"] in ("cat", "dog") and isinstance(value["pet"]["ok"], bool)
    assert isinstance(value["tags"], list) and len(value["tags"]) <= 2 and value["version"] == 1
    # greedy and cached: the same call gives the same instance
    assert guided.guided_json(engine, prompt, schema, max_value_tokens=4)[0] == value
    options = ["alpha", "beta", "gamma"]
    assert options[guided.choose(engine, prompt, options)] in options
