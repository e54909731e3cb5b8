"""One chat turn with tools and structured output: text deltas, then a :class:`Reply`.

The faces that speak a chat-completions protocol (the LangChain chat model, the OpenAI-compatible server) share
this one implementation of a turn: which path a request takes (free text; free text that may open a tool call;
a forced tool call; a reply decoded under a JSON schema), how the tool prompt is prepared, how a call is parsed
or decoded, and how the tokens of each part are counted. The faces only translate their own objects.

>>> from longctx_llm import Engine
>>> engine = Engine("smollm2-135m-instruct")
>>> req = prepare(engine, [{"role": "user", "content": "Capital of France?"}], max_new_tokens=16)
>>> last(events(engine, req)).content                                     # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

from ..config import GenerationConfig
from ..errors import InputError
from ..runtime.templates import normalize_messages, render
from . import guided
from . import tools as tools_mod

#: ``response_format: {"type": "json_object"}``: schema-less JSON cannot be guaranteed from a small local model,
#: so the reply is decoded under this schema (always a parseable object; give a json_schema for your own keys)
JSON_OBJECT_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


@dataclass
class Reply:
    """The end of one model turn."""

    content: str  # the whole reply text (tool calls removed)
    tail: str  # the part of ``content`` not yet streamed as deltas
    calls: list[dict] = field(default_factory=list)  # {"id", "name", "arguments": dict}
    invalid: list[dict] = field(default_factory=list)  # {"id", "name", "arguments": str, "error"}
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: str = "stop"  # stop, length or tool_calls
    model_name: str = ""


@dataclass
class TurnRequest:
    messages: list[dict]
    params: GenerationConfig
    specs: list  # ToolSpec
    choice: str  # auto, none, required or a tool name
    schema: Optional[dict]  # response JSON schema (None: free text)
    session_id: Optional[str]


def response_schema(fmt: Any, *, allow_json_object: bool = False) -> Optional[dict]:
    """The JSON schema of an OpenAI-style ``response_format`` (None: free text).

    ``json_object`` maps to :data:`JSON_OBJECT_SCHEMA` when ``allow_json_object`` (the server documents it);
    the LangChain face refuses it (``with_structured_output`` always has a schema there).
    """
    if fmt is None:
        return None
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "text":
            return None
        if kind == "json_object" and allow_json_object:
            return JSON_OBJECT_SCHEMA
        if kind == "json_schema":
            inner = fmt.get("json_schema", fmt)
            schema = inner.get("schema") if isinstance(inner, dict) else None
            if isinstance(schema, dict):
                return schema
    valid = "{'type': 'text'}, " + ("{'type': 'json_object'}, " if allow_json_object else "")
    raise InputError(
        f"response_format: {fmt!r:.200} is not supported (valid: {valid}{{'type': 'json_schema', 'json_schema': "
        "{'schema': {...}}}" + ("" if allow_json_object else "; schema-less JSON mode cannot be guaranteed on a "
                                "local model") + ")"
    )


def prepare(
    engine,
    messages: Sequence[dict],
    *,
    tools: Optional[Sequence[Union[dict, Any]]] = None,
    tool_choice: Any = None,
    response_format: Any = None,
    session_id: Optional[str] = None,
    allow_json_object: bool = False,
    **gen: Any,
) -> TurnRequest:
    """Check a request and build its :class:`TurnRequest` (``gen``: max_new_tokens, temperature, top_p, top_k,
    seed, stop; None values take the engine's defaults). Raises :class:`InputError` naming the bad value."""
    params = engine.params(**gen)
    specs = tools_mod.normalize_tools(tools)
    choice = tools_mod.normalize_tool_choice(tool_choice, specs)
    schema = response_schema(response_format, allow_json_object=allow_json_object)
    if schema is not None:
        guided.check_schema(schema)
    return TurnRequest(list(messages), params, specs, choice, schema, session_id)


def events(engine, req: TurnRequest, model_name: str = "") -> Iterator[Union[str, Reply]]:
    """Text deltas (str), then one :class:`Reply`. Blocking: async callers run it in a worker thread."""
    model_name = model_name or engine.model_name
    if req.schema is not None:
        yield from _structured(engine, req, model_name)
    elif req.specs and req.choice not in ("auto", "none"):
        yield from _forced_call(engine, req, model_name)
    else:
        yield from _free(engine, req, model_name)


def run(engine, req: TurnRequest, model_name: str = "") -> Reply:
    """The whole turn at once."""
    return last(events(engine, req, model_name))


def last(evs: Iterator[Any]) -> Reply:
    reply = None
    for ev in evs:
        reply = ev
    assert isinstance(reply, Reply)  # events() always ends with one
    return reply


def gen_kwargs(params: GenerationConfig) -> dict:
    return {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "stop": params.stop,
    }


def _prompt(engine, msgs: list[dict], tools: Optional[list[dict]]) -> tuple[str, int]:
    text = render(engine.tokenizer, normalize_messages(msgs), tools=tools)
    return text, len(engine.tokenize(text, add_special_tokens=False))


def _decode_call(engine, req: TurnRequest, prompt: str, candidates: list) -> tuple[dict, int]:
    call, wire = guided.decode_tool_call(engine, prompt, candidates, req.params)
    return call, engine.count_tokens(wire)


def _free(engine, req: TurnRequest, model_name: str) -> Iterator[Any]:
    """Free text; with tools bound ("auto"), a reply that opens a ``<tool_call>`` finishes under the decoder."""
    msgs, tools = tools_mod.prepare_messages(engine.tokenizer, req.messages, req.specs, req.choice)
    parse = bool(req.specs) and req.choice != "none"
    gen = gen_kwargs(req.params)
    if parse:  # stop where a call opens; the decoder writes the call itself (always well formed)
        gen["stop"] = [*gen["stop"], tools_mod.TOOL_CALL_OPEN]
    stream = engine.stream_chat(msgs, req.session_id, tools=tools, **gen)
    holdback = tools_mod.ToolCallHoldback() if parse else None
    streamed = []
    try:
        for delta in stream:
            out = holdback.push(delta) if holdback is not None else delta
            if out:
                streamed.append(out)
                yield out
    finally:
        if stream.completion is None:  # stopped early (consumer gone or error): release the session
            stream.close()
    c = stream.completion
    reply = Reply("", "", input_tokens=c.prompt_tokens, output_tokens=c.completion_tokens,
                  finish_reason=c.finish_reason, model_name=model_name)
    tail = holdback.finish() if holdback is not None else ""
    if parse:
        parsed = tools_mod.parse_tool_calls(tail, req.specs)
        tail, reply.calls, reply.invalid = parsed.content, parsed.calls, parsed.invalid
        if c.stop_reason == tools_mod.TOOL_CALL_OPEN:
            prompt, _ = _prompt(engine, msgs, tools)
            call, n_out = _decode_call(engine, req, prompt + c.text + tools_mod.TOOL_CALL_OPEN, req.specs)
            reply.calls.append(call)
            reply.output_tokens += n_out
        if tail and streamed and not streamed[-1].endswith((" ", "\n")) and not tail[:1].isspace():
            tail = " " + tail
    reply.tail = tail
    reply.content = ("".join(streamed) + tail).strip() if parse else "".join(streamed)
    if reply.calls:
        reply.finish_reason = "tool_calls"
    yield reply


def _forced_call(engine, req: TurnRequest, model_name: str) -> Iterator[Any]:
    """``tool_choice`` "any"/"required"/a name: the call is certain, so the decoder writes all of it."""
    msgs, tools = tools_mod.prepare_messages(engine.tokenizer, req.messages, req.specs, req.choice)
    prompt, n_in = _prompt(engine, msgs, tools)
    candidates = req.specs if req.choice == "required" else [s for s in req.specs if s.name == req.choice]
    call, n_out = _decode_call(engine, req, prompt + tools_mod.TOOL_CALL_OPEN, candidates)
    yield Reply("", "", calls=[call], input_tokens=n_in, output_tokens=n_out + 1,
                finish_reason="tool_calls", model_name=model_name)


def _structured(engine, req: TurnRequest, model_name: str) -> Iterator[Any]:
    """``response_format`` json_schema: the reply is an instance of the schema, decoded under it."""
    msgs = list(req.messages)
    instruction = guided.schema_prompt(req.schema)
    if msgs and msgs[0]["role"] == "system":
        msgs[0] = dict(msgs[0], content=f"{msgs[0]['content']}\n\n{instruction}")
    else:
        msgs.insert(0, {"role": "system", "content": instruction})
    msgs, tools = tools_mod.prepare_messages(engine.tokenizer, msgs, [], "auto")
    prompt, n_in = _prompt(engine, msgs, tools)
    _, text, _ = guided.guided_json(engine, prompt, req.schema, params=req.params)
    yield text
    yield Reply(text, "", input_tokens=n_in, output_tokens=engine.count_tokens(text), model_name=model_name)
