"""LlamaIndex memory for longctx-llm: chat history backed by an engine session (its cache reused across turns).

>>> from longctx_llm import Engine
>>> from llama_index.memory.longctx import LongctxMemory
>>> memory = LongctxMemory.from_defaults(engine=Engine("smollm2-135m-instruct"), session_id="alice")
"""

from .base import LongctxMemory
from .chat_engine import LongctxChatEngine

__all__ = ["LongctxChatEngine", "LongctxMemory"]
