"""The ``llama_index.chat_engine`` pipeline component: a LlamaIndex chat engine with our LLM and our memory."""

from __future__ import annotations

from typing import Iterator, Optional

from pydantic import Field

from longctx_llm.pipeline import Component, ComponentOptions

from .chat_engine import LongctxChatEngine


class ChatEngineOptions(ComponentOptions):
    system_prompt: Optional[str] = Field(None, description="A system message placed before every conversation.")
    session_id: str = Field("default", min_length=1, description="The session of the chat engine returned.")


class ChatEngineComponent(Component):
    """``component: llama_index.chat_engine``: a :class:`LongctxChatEngine` (a LlamaIndex SimpleChatEngine).

    >>> from longctx_llm import load_pipeline
    >>> chat = load_pipeline("examples/pipelines/llama_index_chat_engine.yaml")
    >>> chat.chat("My name is Alice.").response                # doctest: +SKIP
    """

    name = "llama_index.chat_engine"
    Options = ChatEngineOptions

    @classmethod
    def build(cls, engine, options: ChatEngineOptions, config) -> LongctxChatEngine:
        return LongctxChatEngine.from_engine(engine, options.session_id, options.system_prompt)

    @classmethod
    def respond(cls, obj: LongctxChatEngine, prompt: str, session_id: str = "default") -> Iterator[str]:
        """One turn of ``session_id``'s conversation, streamed."""
        response = obj.for_session(session_id).stream_chat(prompt)
        yield from response.response_gen
