"""LlamaIndex async calls at once over the engine's scheduler: the same replies as one at a time, decoded as rows of
shared forwards."""

from __future__ import annotations

import asyncio

from llama_index.core.llms import ChatMessage

from llama_index.llms.longctx import LongctxLLM
from longctx_llm import Engine

PROMPTS = ["Name a colour.", "Count to five.", "Hello!", "Tell me about the sea."]


def test_concurrent_achat_and_acomplete_equal_one_at_a_time(peaked_model):
    tiny = peaked_model()
    one = Engine(tiny, batching={"max_batch": 1})
    serial = LongctxLLM(engine=one, max_new_tokens=8, temperature=0.0)
    expected = [serial.chat([ChatMessage(role="user", content=p)]).message.content for p in PROMPTS]
    engine = Engine(tiny, batching={"max_batch": 8})
    llm = LongctxLLM(engine=engine, max_new_tokens=8, temperature=0.0)

    async def concurrent():
        return await asyncio.gather(*(llm.achat([ChatMessage(role="user", content=p)]) for p in PROMPTS))

    assert [r.message.content for r in asyncio.run(concurrent())] == expected
    completions = [serial.complete(p).text for p in PROMPTS]

    async def concurrent_complete():
        return await asyncio.gather(*(llm.acomplete(p) for p in PROMPTS))

    assert [r.text for r in asyncio.run(concurrent_complete())] == completions
    alone = sum(one.complete(p, max_new_tokens=8).completion_tokens - 1 for p in PROMPTS)  # one at a time
    assert engine.scheduler.steps <= 2 * (alone + 8 * len(PROMPTS)) / 3  # chats and completions shared forwards
