"""LangChain messages -> the plain message dicts of ``longctx_llm`` (and nothing is dropped on the way).

The model is text-only: a content block it cannot read (image, audio, file...) is an error naming the block,
not a silent omission. Anthropic-style ``tool_use`` blocks in an AIMessage are covered by its ``tool_calls``;
ToolMessages keep their ``tool_call_id``, ``name`` and ``status`` (so an error result reads as one).

>>> from langchain_core.messages import HumanMessage
>>> to_core_messages([HumanMessage("hi")])
[{'role': 'user', 'content': 'hi'}]
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from longctx_llm.errors import InputError

#: content block types that carry no text for the model but are represented elsewhere on the message
_COVERED_BLOCKS = {"tool_use", "tool_call", "tool_call_chunk", "function_call", "reasoning", "thinking"}
_TEXT_BLOCKS = {"text", "text-plain"}


def content_text(content: Any, where: str) -> str:
    """The text of a message's content (a string, or a list of text blocks)."""
    if isinstance(content, str):
        return content
    parts = []
    for j, block in enumerate(content or []):
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in _TEXT_BLOCKS:
            parts.append(block.get("text", ""))
        elif kind in _COVERED_BLOCKS:
            continue
        else:
            raise InputError(
                f"{where}.content[{j}]: a {kind!r} block cannot be read by this text-only model (valid: text)"
            )
    return "".join(parts)


def to_core_messages(messages: Sequence[BaseMessage]) -> list[dict]:
    """Convert LangChain messages into ``{"role", "content", ...}`` dicts for the engine."""
    out: list[dict] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        text = content_text(m.content, where)
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": text})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": text})
        elif isinstance(m, AIMessage):
            msg: dict[str, Any] = {"role": "assistant", "content": text}
            if m.tool_calls:
                msg["tool_calls"] = [
                    {"id": c.get("id"), "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in m.tool_calls
                ]
            if m.invalid_tool_calls:
                raise InputError(
                    f"{where}: the AIMessage carries invalid tool calls "
                    f"{[c.get('name') for c in m.invalid_tool_calls]}; fix or remove them before sending it back"
                )
            out.append(msg)
        elif isinstance(m, ToolMessage):
            if isinstance(m.content, str):
                body = m.content
            else:
                try:
                    body = content_text(m.content, where)
                except InputError:
                    body = json.dumps(m.content)
            msg = {"role": "tool", "content": body, "tool_call_id": m.tool_call_id}
            if m.name:
                msg["name"] = m.name
            if getattr(m, "status", "success") == "error":
                msg["status"] = "error"
            out.append(msg)
        elif isinstance(m, FunctionMessage):
            out.append({"role": "tool", "content": text, "name": m.name})
        elif isinstance(m, ChatMessage):
            role = {"human": "user", "ai": "assistant"}.get(m.role, m.role)
            if role not in ("system", "user", "assistant", "tool"):
                raise InputError(f"{where}.role: {m.role!r} is not valid (valid: system, user, assistant, tool)")
            out.append({"role": role, "content": text})
        else:
            raise InputError(
                f"{where}: {type(m).__name__} is not supported (valid: System, Human, AI, Tool, Function, Chat)"
            )
    return out
