"""LlamaIndex LLM for longctx-llm: a local model under a long-context strategy (DCA, RCC, CCM, StreamingLLM).

>>> from llama_index.llms.longctx import LongctxLLM
>>> llm = LongctxLLM(model_name="smollm2-135m-instruct", strategy="full")   # loads nothing yet
"""

from .base import LongctxLLM, ToolCallError
from .messages import SESSION_KEY

__all__ = ["LongctxLLM", "SESSION_KEY", "ToolCallError"]
