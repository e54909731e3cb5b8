"""LongctxChatEngine: LlamaIndex's SimpleChatEngine over a LongctxLLM and a LongctxMemory, one per session."""

from __future__ import annotations

import threading
from typing import Optional

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.settings import Settings

from longctx_llm import Engine
from llama_index.llms.longctx import LongctxLLM

from .base import LongctxMemory


class LongctxChatEngine(SimpleChatEngine):
    """A SimpleChatEngine whose turns run in an engine session (its cache is reused from turn to turn).

    It is a stock ``SimpleChatEngine`` (``chat``, ``stream_chat``, ``achat``, ``astream_chat``, ``reset``,
    ``chat_history``); it adds ``engine`` and :meth:`for_session`, the same chat engine for another session (one
    per user or thread), as the ``longctx chat`` command and servers need.

    >>> from longctx_llm import Engine
    >>> chat = LongctxChatEngine.from_engine(Engine("smollm2-135m-instruct"), system_prompt="Be brief.")
    >>> chat.chat("My name is Alice.").response                        # doctest: +SKIP
    >>> chat.for_session("bob").chat("What is my name?").response      # doctest: +SKIP
    """

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        session_id: str = "default",
        system_prompt: Optional[str] = None,
        llm: Optional[LongctxLLM] = None,
    ) -> "LongctxChatEngine":
        llm = llm if llm is not None else LongctxLLM(engine=engine)
        prefix = [ChatMessage(role=MessageRole.SYSTEM, content=system_prompt)] if system_prompt else []
        memory = LongctxMemory.from_defaults(engine=engine, llm=llm, session_id=session_id)
        chat = cls(llm=llm, memory=memory, prefix_messages=prefix, callback_manager=Settings.callback_manager)
        chat._longctx_llm, chat._system_prompt = llm, system_prompt
        chat._siblings, chat._siblings_lock = {session_id: chat}, threading.Lock()
        return chat

    @property
    def engine(self) -> Engine:
        return self._longctx_llm.engine

    @property
    def session_id(self) -> str:
        return self._memory.session_id

    def for_session(self, session_id: str) -> "LongctxChatEngine":
        """The chat engine of ``session_id`` (made on first use, then the same object)."""
        with self._siblings_lock:
            chat = self._siblings.get(session_id)
            if chat is None:
                chat = type(self).from_engine(self.engine, session_id, self._system_prompt, self._longctx_llm)
                chat._siblings, chat._siblings_lock = self._siblings, self._siblings_lock
                self._siblings[session_id] = chat
            return chat
