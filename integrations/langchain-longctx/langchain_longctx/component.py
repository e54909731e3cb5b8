"""The ``langchain.chat_model`` pipeline component: a YAML pipeline that yields a :class:`ChatLongctx`.

Registered under the entry-point group ``longctx_llm.components``, so ``component: langchain.chat_model`` in a
pipeline file builds a chat model on the pipeline's engine (its model, strategy, memory and generation
defaults), and ``longctx run``/``longctx chat`` talk to it through :meth:`LangChainChatComponent.respond`.

>>> from longctx_llm import load_pipeline
>>> llm = load_pipeline("examples/pipelines/langchain.yaml")    # a ChatLongctx; nothing loaded yet
>>> llm.invoke("What is the capital of France?").content        # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

from typing import Iterator, Optional

from pydantic import Field

from longctx_llm import Component, ComponentOptions

from .chat_models import ChatLongctx


class LangChainChatOptions(ComponentOptions):
    system_prompt: Optional[str] = Field(None, description="A system message put first when a conversation has none.")


class LangChainChatComponent(Component):
    """Builds a :class:`ChatLongctx` on the pipeline's engine."""

    name = "langchain.chat_model"
    Options = LangChainChatOptions

    @classmethod
    def build(cls, engine, options, config) -> ChatLongctx:
        return ChatLongctx.from_engine(engine, system_prompt=options.system_prompt)

    @classmethod
    def respond(cls, obj: ChatLongctx, prompt: str, session_id: str = "default") -> Iterator[str]:
        """One user turn of a CLI chat: the session's history plus the new turn, streamed as text."""
        history = [(m["role"], m["content"]) for m in obj.engine.session(session_id).history if m["role"] != "tool"]
        config = {"configurable": {"session_id": session_id}}
        for chunk in obj.stream([*history, ("user", prompt)], config=config):
            if chunk.text:
                yield chunk.text
