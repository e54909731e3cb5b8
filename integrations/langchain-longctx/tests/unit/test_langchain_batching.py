"""LangChain's batch / abatch / concurrent ainvoke over the engine's scheduler: the same replies as one at a time,
decoded as rows of shared forwards."""

from __future__ import annotations

import asyncio

from langchain_longctx import ChatLongctx
from longctx_llm import Engine

PROMPTS = ["Name a colour.", "Count to five.", "Hello!", "Tell me about the sea.", "What is two plus two?"]


def test_batch_and_abatch_equal_one_at_a_time(peaked_model):
    tiny = peaked_model()
    serial = ChatLongctx.from_engine(Engine(tiny, batching={"max_batch": 1}))
    replies = [serial.invoke(p, max_tokens=8) for p in PROMPTS]
    expected = [m.content for m in replies]
    alone = sum(m.usage_metadata["output_tokens"] - 1 for m in replies)  # decode forwards of one call at a time
    engine = Engine(tiny, batching={"max_batch": 8})
    llm = ChatLongctx.from_engine(engine)
    assert [m.content for m in llm.batch(PROMPTS, max_tokens=8)] == expected
    assert [m.content for m in asyncio.run(llm.abatch(PROMPTS, max_tokens=8))] == expected

    async def concurrent():
        return await asyncio.gather(*(llm.ainvoke(p, max_tokens=8) for p in PROMPTS))

    assert [m.content for m in asyncio.run(concurrent())] == expected
    assert engine.scheduler.steps <= 3 * alone / 2  # three rounds whose rows shared forwards
