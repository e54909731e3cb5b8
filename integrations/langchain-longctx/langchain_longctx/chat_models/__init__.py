"""Chat models of langchain-longctx."""

from langchain_longctx.chat_models.base import ChatLongctx

__all__ = ["ChatLongctx"]
