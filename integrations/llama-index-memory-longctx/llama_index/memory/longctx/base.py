"""LongctxMemory: a LlamaIndex chat memory backed by a longctx-llm engine session.

LlamaIndex chat engines keep the conversation in a memory and send all of it to the LLM every turn. A local model
would then re-read the whole conversation each turn. This memory lives as long as one engine session: the
messages it returns carry that session's id (``additional_kwargs["longctx_session_id"]``), so
:class:`~llama_index.llms.longctx.LongctxLLM` answers the turn inside the session and only the new tokens are fed
(the strategy's cache is reused; a compressed memory such as CCM keeps its slots there too).

The memory does not trim by tokens: what the model sees of a long conversation is the engine's memory plugin's
choice (``buffer`` with ``max_turns``, CCM...), and a conversation that outgrows the strategy's window raises
:class:`~longctx_llm.errors.ContextWindowError` naming the strategies that fit it. When the engine session is
reset or replaced (``engine.reset_session``, ``/reset`` in ``longctx chat``, ``engine.load_session``), the memory
starts empty with it.
"""

from __future__ import annotations

import threading
from typing import Any, List, Optional

from llama_index.core.base.llms.types import ChatMessage
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.memory.types import BaseMemory
from pydantic import ValidationError

from longctx_llm import Engine
from longctx_llm.config import format_validation_error
from longctx_llm.errors import ConfigError, InputError
from llama_index.llms.longctx import SESSION_KEY

_GET_KWARGS = ("initial_token_count",)


class LongctxMemory(BaseMemory):
    """Chat history of one engine session, for LlamaIndex chat engines and agents.

    >>> from llama_index.core.chat_engine import SimpleChatEngine
    >>> from llama_index.llms.longctx import LongctxLLM
    >>> from llama_index.memory.longctx import LongctxMemory
    >>> llm = LongctxLLM(model_name="smollm2-135m-instruct", max_new_tokens=32)
    >>> memory = LongctxMemory.from_defaults(llm=llm, session_id="alice")
    >>> chat = SimpleChatEngine.from_defaults(llm=llm, memory=memory)
    >>> chat.chat("My name is Alice.").response                      # doctest: +SKIP
    >>> chat.chat("What is my name?").response                       # doctest: +SKIP
    'Your name is Alice.'
    """

    session_id: str = Field("default", min_length=1, description="The engine session this memory belongs to.")

    _engine: Engine = PrivateAttr()
    _messages: List[ChatMessage] = PrivateAttr(default_factory=list)
    _session: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.RLock)

    def __init__(self, engine: Engine, **data: Any) -> None:
        if not isinstance(engine, Engine):
            raise ConfigError(f"engine: expected a longctx_llm.Engine, got {type(engine).__name__}")
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "LongctxMemory")) from e
        self._engine = engine

    @classmethod
    def class_name(cls) -> str:
        return "LongctxMemory"

    @classmethod
    def from_defaults(
        cls,
        engine: Optional[Engine] = None,
        llm: Any = None,
        session_id: str = "default",
        chat_history: Optional[List[ChatMessage]] = None,
        **kwargs: Any,
    ) -> "LongctxMemory":
        """A memory for ``session_id`` of ``engine`` (or of ``llm.engine`` for a LongctxLLM)."""
        if kwargs:
            raise ConfigError(
                f"LongctxMemory.from_defaults: unknown argument(s) {sorted(kwargs)} "
                "(valid: engine, llm, session_id, chat_history)"
            )
        if engine is None:
            engine = getattr(llm, "engine", None) if llm is not None else None
            if not isinstance(engine, Engine):
                got = "nothing" if llm is None else f"llm of type {type(llm).__name__}"
                raise ConfigError(
                    "LongctxMemory needs the engine its session lives in: pass engine= or llm= (a LongctxLLM); "
                    f"got {got}"
                )
        elif llm is not None and getattr(llm, "engine", engine) is not engine:
            raise ConfigError("LongctxMemory.from_defaults: engine= and llm= name different engines; give one")
        memory = cls(engine, session_id=session_id)
        if chat_history:
            memory.set(chat_history)
        return memory

    @property
    def engine(self) -> Engine:
        return self._engine

    def _live(self) -> List[ChatMessage]:
        """The message list, emptied if the engine session it belonged to was reset or replaced."""
        engine = self._engine
        session = engine.get_session(self.session_id)  # never creates a session or loads the model
        if session is not None:
            if self._session is not None and session is not self._session:
                self._messages = []
            self._session = session
        elif self._session is not None:
            self._messages = []
            self._session = None
        return self._messages

    # ---- BaseMemory ----------------------------------------------------------------------------------------
    def get(self, input: Optional[str] = None, **kwargs: Any) -> List[ChatMessage]:
        """The conversation, each message marked with this memory's session (the engine decides any trimming)."""
        unknown = sorted(set(kwargs) - set(_GET_KWARGS))
        if unknown:
            valid = ", ".join(("input", *_GET_KWARGS))
            raise InputError(f"LongctxMemory.get: unknown argument(s) {unknown} (valid: {valid})")
        with self._lock:
            messages = list(self._live())
        return [
            m.model_copy(update={"additional_kwargs": {**m.additional_kwargs, SESSION_KEY: self.session_id}})
            for m in messages
        ]

    def get_all(self) -> List[ChatMessage]:
        with self._lock:
            return list(self._live())

    def put(self, message: ChatMessage) -> None:
        if not isinstance(message, ChatMessage):
            raise InputError(f"LongctxMemory.put: expected a ChatMessage, got {type(message).__name__}")
        with self._lock:
            self._live().append(_untagged(message))

    def set(self, messages: List[ChatMessage]) -> None:
        bad = [i for i, m in enumerate(messages) if not isinstance(m, ChatMessage)]
        if bad:
            raise InputError(f"LongctxMemory.set: messages{bad} are not ChatMessages")
        with self._lock:
            self._live()
            self._messages = [_untagged(m) for m in messages]

    def reset(self) -> None:
        """Forget the conversation and the session's model-side state (cache, compressed memory)."""
        with self._lock:
            self._messages = []
            self._session = None
            self._engine.reset_session(self.session_id)


def _untagged(message: ChatMessage) -> ChatMessage:
    if SESSION_KEY not in message.additional_kwargs:
        return message
    extra = {k: v for k, v in message.additional_kwargs.items() if k != SESSION_KEY}
    return message.model_copy(update={"additional_kwargs": extra})
