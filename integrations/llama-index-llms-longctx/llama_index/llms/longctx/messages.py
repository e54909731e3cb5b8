"""LlamaIndex chat messages to and from the engine's plain dict messages.

The engine speaks transformers' message dicts (``role``, ``content``, ``tool_calls``, ``tool_call_id``); LlamaIndex
speaks :class:`ChatMessage` with content blocks. Everything a local text model cannot take raises
:class:`~longctx_llm.errors.InputError` naming the message and the valid choices; nothing is dropped silently.

Role synonyms other providers use are mapped as a documented fallback:

========================  ==========
LlamaIndex role           sent as
========================  ==========
system, developer         system
user                      user
assistant, chatbot, model assistant
tool, function            tool
========================  ==========

A message returned by :class:`llama_index.memory.longctx.LongctxMemory` carries the id of the engine session it
belongs to in ``additional_kwargs[SESSION_KEY]``; :func:`session_of` reads it so that a chat engine's turns run in
that session (its cache is reused) without the chat engine knowing about sessions.
"""

from __future__ import annotations

import json
from typing import Any, Optional, Sequence

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock

from longctx_llm.errors import InputError

#: ``ChatMessage.additional_kwargs`` key naming the engine session a message belongs to.
SESSION_KEY = "longctx_session_id"

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


def _text(message: ChatMessage, i: int) -> tuple[str, list[dict]]:
    """The text of a message and the tool calls held in its blocks."""
    parts: list[str] = []
    calls: list[dict] = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif isinstance(block, ToolCallBlock):
            args = block.tool_kwargs
            if isinstance(args, str):
                try:
                    args = json.loads(args) if args.strip() else {}
                except json.JSONDecodeError as e:
                    raise InputError(
                        f"messages[{i}]: tool call {block.tool_name!r} has arguments that are not JSON: {args!r}"
                    ) from e
            calls.append({"id": block.tool_call_id, "name": block.tool_name, "arguments": args})
        else:
            kind = getattr(block, "block_type", type(block).__name__)
            raise InputError(
                f"messages[{i}]: a {kind!r} block cannot be sent to a local text model (valid blocks: text, tool_call)"
            )
    return "".join(parts), calls


def to_engine_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """Engine message dicts for LlamaIndex messages (tool calls from blocks or ``additional_kwargs``)."""
    if not messages:
        raise InputError("messages: at least one message is required, got an empty list")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, ChatMessage):
            raise InputError(f"messages[{i}]: expected a llama_index ChatMessage, got {type(m).__name__}")
        role = _ROLES.get(MessageRole(m.role))
        if role is None:
            valid = ", ".join(r.value for r in _ROLES)
            raise InputError(f"messages[{i}].role: {m.role!r} cannot be sent to the model (valid: {valid})")
        content, calls = _text(m, i)
        extra = m.additional_kwargs or {}
        calls += list(extra.get("tool_calls") or [])  # OpenAI-style dicts from older integrations
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            if role != "assistant":
                raise InputError(f"messages[{i}]: only assistant messages can carry tool calls, got role {role!r}")
            msg["tool_calls"] = calls
        if role == "tool":
            for key in ("tool_call_id", "name"):
                if extra.get(key):
                    msg[key] = extra[key]
        out.append(msg)
    return out


def session_of(messages: Sequence[ChatMessage]) -> Optional[str]:
    """The engine session the messages belong to (set by LongctxMemory), or None."""
    ids = {m.additional_kwargs.get(SESSION_KEY) for m in messages if isinstance(m, ChatMessage)} - {None}
    if len(ids) > 1:
        raise InputError(f"messages: they come from several sessions {sorted(ids)}; a turn runs in one session")
    return ids.pop() if ids else None


def assistant_message(content: str, calls: Sequence[dict] = (), invalid: Sequence[dict] = ()) -> ChatMessage:
    """The reply as a ChatMessage: text block plus one ToolCallBlock per parsed call.

    Calls the parser could not accept (unknown tool, broken JSON) are kept in
    ``additional_kwargs["invalid_tool_calls"]`` with the reason, so they are visible rather than lost.
    """
    blocks: list[Any] = [TextBlock(text=content)] if content or not calls else []
    blocks += [ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"]) for c in calls]
    extra = {"invalid_tool_calls": list(invalid)} if invalid else {}
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)
