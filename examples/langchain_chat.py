"""LangChain with a local long-context model: chat, streaming, sessions, tools and structured output.

Run:  HF_HUB_OFFLINE=1 python examples/langchain_chat.py
(``scripts/setup.sh`` installs what it needs; everything runs on CPU.)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_longctx import ChatLongctx
from longctx_llm import load_pipeline

logger = logging.getLogger("langchain_chat")


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny in {city}."


class Capital(BaseModel):
    """A country and its capital city."""

    country: str = Field(description="the country")
    capital: str = Field(description="its capital city")


def main() -> None:
    # 1. From a pipeline file (the same YAML swaps strategy with one line), or directly: ChatLongctx(model=...)
    llm: ChatLongctx = load_pipeline(Path(__file__).parent / "pipelines" / "langchain.yaml")
    logger.info("invoke: %s", llm.invoke("What is the capital of France?").content)

    # 2. Streaming with a stop sequence
    logger.info("stream: %s", "".join(c.text for c in llm.stream("Count from 1 to 10.", stop=["5"])))

    # 3. A conversation: the messages are yours to keep (LangGraph's checkpointer keeps them per thread_id); passing
    #    the thread_id makes the model-side KV cache of that thread persist, so each turn feeds only its new tokens.
    #    (A 135M model follows a conversation's topic but does not reliably recall facts from earlier turns; point the
    #    pipeline's model.source at a larger local model for that.)
    cfg = {"configurable": {"thread_id": "demo"}}
    history = [("human", "What is the capital of France?")]
    history.append(("ai", llm.invoke(history, config=cfg).content))
    history.append(("human", "And the capital of Italy?"))
    logger.info("session: %s", llm.invoke(history, config=cfg).content)
    logger.info("  tokens the thread's cache holds: %d", len(llm.engine.session("demo").cached_ids))

    # 4. Tools: a forced choice is decoded under the tool's argument schema
    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What's the weather in Paris?")
    logger.info("tool call: %s", call.tool_calls)

    # 5. Structured output
    text = "Rome is the capital city of Italy."
    logger.info("structured: %r", llm.with_structured_output(Capital).invoke(f"Extract the country and its capital: {text}"))

    # 6. Real async: the event loop keeps running while the model works in a worker thread
    async def two_at_once():
        return await asyncio.gather(llm.ainvoke("Say hi."), llm.ainvoke("Say bye."))

    logger.info("async: %s", [m.content for m in asyncio.run(two_at_once())])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
