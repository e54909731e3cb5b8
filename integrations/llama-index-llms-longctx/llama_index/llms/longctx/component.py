"""The ``llama_index.llm`` pipeline component: a YAML pipeline that yields a :class:`LongctxLLM`."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from pydantic import Field

from longctx_llm.pipeline import Component, ComponentOptions

from .base import LongctxLLM


class LlmOptions(ComponentOptions):
    system_prompt: Optional[str] = Field(None, description="System prompt of the LLM (LlamaIndex's system_prompt).")


class LlmComponent(Component):
    """``component: llama_index.llm``: the pipeline's engine as a LlamaIndex LLM.

    >>> from longctx_llm import load_pipeline
    >>> llm = load_pipeline("examples/pipelines/llama_index_llm.yaml")   # a LongctxLLM; loads nothing yet
    >>> llm.complete("Name a primary colour.").text                     # doctest: +SKIP
    'Red.'
    """

    name = "llama_index.llm"
    Options = LlmOptions

    @classmethod
    def build(cls, engine, options: LlmOptions, config) -> LongctxLLM:
        return LongctxLLM(engine=engine, system_prompt=options.system_prompt)

    @classmethod
    def respond(cls, obj: LongctxLLM, prompt: str, session_id: str = "default") -> Iterator[str]:
        """One user turn in ``session_id``: the session's past turns are sent again and its cache reused."""
        history: list[Any] = list(obj.engine.session(session_id).history)
        if not history and obj.system_prompt:
            history.append({"role": "system", "content": obj.system_prompt})
        messages = [ChatMessage(role=m["role"], content=m["content"]) for m in history]
        messages.append(ChatMessage(role=MessageRole.USER, content=prompt))
        for chunk in obj.stream_chat(messages, session_id=session_id):
            if chunk.delta:
                yield chunk.delta
