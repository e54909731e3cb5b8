"""Server-sent events in OpenAI's streaming format: one ``data: {json}`` per chunk, then ``data: [DONE]``.

The engine's events (text deltas, then a reply) arrive through :func:`longctx_llm.runtime.aio.aiter_sync`, which runs
the blocking engine in a worker thread, so the event loop keeps serving other requests while tokens are made.
An error after the stream started (the status line is already sent) is sent as an ``{"error": ...}`` event.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from longctx_llm import Completion
from longctx_llm.chat import turns

from . import convert
from .errors import to_api_error

DONE = "data: [DONE]\n\n"


def event(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _rest(first: Any, events: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for ev in events:
        yield ev


async def chat_stream(first: Any, events: AsyncIterator[Any], rid: str, created: int, model: str,
                      include_usage: bool) -> AsyncIterator[str]:
    """``first``: the turn's first event, already awaited (so a request that fails at once gets a JSON error)."""
    yield event(convert.chat_chunk(rid, created, model, {"role": "assistant", "content": ""}))
    reply = None
    try:
        async for ev in _rest(first, events):
            if isinstance(ev, turns.Reply):
                reply = ev
            elif ev:
                yield event(convert.chat_chunk(rid, created, model, {"content": ev}))
    except Exception as e:  # noqa: BLE001 - reported to the client, the server goes on
        yield event(to_api_error(e).body())
        yield DONE
        return
    finally:
        await events.aclose()
    if reply.tail:
        yield event(convert.chat_chunk(rid, created, model, {"content": reply.tail}))
    for i, call in enumerate(convert.tool_calls(reply)):
        yield event(convert.chat_chunk(rid, created, model, {"tool_calls": [{"index": i, **call}]}))
    yield event(convert.chat_chunk(rid, created, model, {}, convert.finish_reason(reply)))
    if include_usage:
        usage = convert.usage(reply.input_tokens, reply.output_tokens)
        yield event(convert.chat_chunk(rid, created, model, None, usage_=usage))
    yield DONE


async def completion_stream(first: Any, events: AsyncIterator[Any], rid: str, created: int, model: str,
                            include_usage: bool) -> AsyncIterator[str]:
    """A text completion: deltas (str), then the engine's :class:`Completion`."""
    done = None
    try:
        async for ev in _rest(first, events):
            if isinstance(ev, Completion):
                done = ev
            elif ev:
                yield event(convert.completion_chunk(rid, created, model, ev))
    except Exception as e:  # noqa: BLE001
        yield event(to_api_error(e).body())
        yield DONE
        return
    finally:
        await events.aclose()
    yield event(convert.completion_chunk(rid, created, model, "", done.finish_reason))
    if include_usage:
        usage = convert.usage(done.prompt_tokens, done.completion_tokens)
        yield event(convert.completion_chunk(rid, created, model, None, usage_=usage))
    yield DONE
