"""Chat turns beyond plain text, shared by every face that speaks a chat API (LangChain, LlamaIndex, the server).

- :mod:`.tools`: tool specs, the fallback tool prompt for templates without tools, parsing tool calls out of a reply;
- :mod:`.guided`: schema-guided JSON decoding (a tool call or a structured reply that always validates);
- :mod:`.turns`: one chat turn with tools and a response format (:class:`TurnRequest` in, text deltas and a
  :class:`Reply` out), the code the LangChain chat model and the OpenAI-compatible server both run.

May import: :mod:`longctx_llm.errors`, :mod:`longctx_llm.config` and :mod:`longctx_llm.runtime` (an engine's
calls, the generation loop, chat templates). Nothing in the runtime imports this part.
"""

from . import guided, tools, turns
from .guided import GuidedDecodingError, guided_json
from .tools import ToolSpec, normalize_tools, parse_tool_calls
from .turns import Reply, TurnRequest

__all__ = [
    "GuidedDecodingError",
    "Reply",
    "ToolSpec",
    "TurnRequest",
    "guided",
    "guided_json",
    "normalize_tools",
    "parse_tool_calls",
    "tools",
    "turns",
]
