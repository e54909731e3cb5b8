"""OpenAI requests -> the engine's arguments; the engine's replies -> OpenAI response objects.

Everything model-side (tool prompt, tool-call parsing, forced calls, schema-guided JSON, token counts) is
:mod:`longctx_llm.chat.turns`, the code the LangChain chat model runs; this module only translates.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Optional

from longctx_llm.chat import guided, turns
from longctx_llm.errors import InputError

from .schemas import ChatCompletionRequest, CompletionRequest, _Request

_TEXT_PARTS = ("text", "input_text")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def check_supported(req: _Request) -> None:
    bad = req.unsupported()
    if bad:
        raise InputError(f"unsupported parameters for this local model: {'; '.join(bad)}")


def _content_text(content: Any, where: str) -> Optional[str]:
    """A message's content as text: a string, or a list of text parts (other parts are refused by name)."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InputError(f"{where}.content: expected a string or a list of content parts, got {type(content).__name__}")
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise InputError(
                f"{where}.content[{j}]: a {kind!r} part cannot be read by this text-only model (valid: text)"
            )
        parts.append(part["text"])
    return "".join(parts)


def engine_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages -> the engine's message dicts (roles and tool fields checked by the core)."""
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        msg = {k: v for k, v in m.items() if k in ("role", "content", "name", "tool_calls", "tool_call_id")}
        msg["content"] = _content_text(m.get("content"), where)
        if msg["content"] is None and not m.get("tool_calls"):
            raise InputError(f"{where}.content: missing (only assistant messages with tool_calls may omit it)")
        if msg.get("name") is None:
            msg.pop("name", None)
        if not msg.get("tool_calls"):
            msg.pop("tool_calls", None)
        out.append(msg)
    return out


def gen_arguments(req: _Request, max_tokens: Optional[int]) -> dict:
    """Sampling options for the engine (None: the pipeline's generation defaults)."""
    return {
        "max_new_tokens": max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "top_k": req.top_k,
        "seed": req.seed,
        "stop": req.stop,
    }


def chat_turn(engine, req: ChatCompletionRequest, session_id: Optional[str]) -> turns.TurnRequest:
    """Check a chat request and build the turn the engine runs."""
    check_supported(req)
    if req.max_tokens and req.max_completion_tokens and req.max_tokens != req.max_completion_tokens:
        raise InputError(
            f"max_tokens={req.max_tokens} and max_completion_tokens={req.max_completion_tokens} disagree; give one"
        )
    turn = turns.prepare(
        engine,
        engine_messages(req.messages),
        tools=req.tools,
        tool_choice=req.tool_choice,
        response_format=req.response_format,
        session_id=session_id,
        allow_json_object=True,
        **gen_arguments(req, req.max_completion_tokens or req.max_tokens),
    )
    if turn.choice not in ("auto", "none"):  # a forced call is decoded under its schema: refuse one it cannot write
        for spec in turn.specs if turn.choice == "required" else [s for s in turn.specs if s.name == turn.choice]:
            try:
                guided.check_schema(spec.parameters)
            except InputError as e:
                raise InputError(f"tools ({spec.name}): cannot be called with tool_choice={req.tool_choice!r}: {e}") from e
    return turn


def completion_prompts(req: CompletionRequest) -> list[str]:
    check_supported(req)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise InputError("prompt: expected a string or a non-empty list of strings, got []")
    return prompts


# ---- responses ---------------------------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_calls(reply: turns.Reply) -> list[dict]:
    """The reply's calls in OpenAI's shape; a call the model wrote badly keeps its raw arguments text (clients
    such as LangChain report it as an invalid tool call)."""
    out = [
        {"id": c["id"], "type": "function",
         "function": {"name": c["name"], "arguments": json.dumps(c["arguments"], ensure_ascii=False)}}
        for c in reply.calls
    ]
    out += [
        {"id": c["id"], "type": "function",
         "function": {"name": c.get("name") or "", "arguments": c.get("arguments") or ""}}
        for c in reply.invalid
    ]
    return out


def finish_reason(reply: turns.Reply) -> str:
    return "tool_calls" if reply.calls or reply.invalid else reply.finish_reason


def chat_completion(reply: turns.Reply, model: str, rid: str, created: int) -> dict:
    calls = tool_calls(reply)
    message: dict[str, Any] = {"role": "assistant", "content": reply.content if reply.content or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason(reply)}],
        "usage": usage(reply.input_tokens, reply.output_tokens),
    }


def chat_chunk(rid: str, created: int, model: str, delta: Optional[dict], finish: Optional[str] = None,
               usage_: Optional[dict] = None) -> dict:
    """One ``chat.completion.chunk``; ``delta=None`` gives the usage-only chunk (no choices)."""
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def text_completion(choices: list[tuple[str, str]], model: str, rid: str, created: int, prompt_tokens: int,
                    completion_tokens: int) -> dict:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {"index": i, "text": text, "logprobs": None, "finish_reason": reason}
            for i, (text, reason) in enumerate(choices)
        ],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def completion_chunk(rid: str, created: int, model: str, text: Optional[str], finish: Optional[str] = None,
                     usage_: Optional[dict] = None) -> dict:
    chunk: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": None,
        "choices": [] if text is None else [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if usage_ is not None:
        chunk["usage"] = usage_
    return chunk


def now() -> int:
    return int(time.time())
