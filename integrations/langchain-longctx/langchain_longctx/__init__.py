"""LangChain integration of longctx-llm: ``ChatLongctx``, a chat model on a local long-context engine.

>>> from langchain_longctx import ChatLongctx
>>> llm = ChatLongctx(model="smollm2-135m-instruct", strategy="full", max_tokens=32)   # loads nothing yet
"""

from langchain_longctx.chat_models import ChatLongctx

__all__ = ["ChatLongctx"]
