"""LangChain with a local long-context model: chat, streaming, sessions, tools and structured output.

Run:  HF_HUB_OFFLINE=1 python examples/langchain_chat.py
(``scripts/setup.sh`` installs what it needs; everything runs on CPU.)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from langchain_core.chat_history import InMemoryChatMessageHistory
from langchain_core.runnables.history import RunnableWithMessageHistory
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

    # 3. Model-side sessions: the KV cache of "demo" is kept between turns (only new tokens are fed).
    store: dict[str, InMemoryChatMessageHistory] = {}
    chat = RunnableWithMessageHistory(llm, lambda sid: store.setdefault(sid, InMemoryChatMessageHistory()))
    cfg = {"configurable": {"session_id": "demo"}}  # LangGraph: {"configurable": {"thread_id": ...}} works the same
    chat.invoke("My name is Ada.", config=cfg)
    logger.info("session: %s", chat.invoke("What is my name?", config=cfg).content)

    # 4. Tools: a forced choice is decoded under the tool's argument schema
    call = llm.bind_tools([get_weather], tool_choice="get_weather").invoke("What's the weather in Paris?")
    logger.info("tool call: %s", call.tool_calls)

    # 5. Structured output
    logger.info("structured: %r", llm.with_structured_output(Capital).invoke("The capital of Italy?"))

    # 6. Real async: the event loop keeps running while the model works in a worker thread
    async def two_at_once():
        return await asyncio.gather(llm.ainvoke("Say hi."), llm.ainvoke("Say bye."))

    logger.info("async: %s", [m.content for m in asyncio.run(two_at_once())])


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
