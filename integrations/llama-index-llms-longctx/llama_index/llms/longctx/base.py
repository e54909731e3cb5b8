"""LongctxLLM: a LlamaIndex LLM over a local model run by a longctx-llm Engine.

Why a class of our own instead of ``HuggingFaceLLM``: the engine's strategy decides how long a prompt may be
(DCA attends to 8x the pretraining length), and LlamaIndex's PromptHelper packs retrieved text up to
``metadata.context_window``, so the metadata must report the strategy's real window; the engine keeps per-session
caches that chat engines can reuse; and async calls must run the model off the event loop, which ``CustomLLM``'s
default async methods do not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, List, Optional, Sequence, Union

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import ValidationError

from longctx_llm import Completion, Engine, TextStream
from longctx_llm.chat import guided
from longctx_llm.chat import tools as tool_mod
from longctx_llm.config import ModelConfig, format_validation_error
from longctx_llm.errors import ConfigError, InputError, LongctxError
from longctx_llm.model import DEFAULT_MODEL
from longctx_llm.runtime import aio

from .messages import assistant_message, session_of, to_engine_messages

logger = logging.getLogger(__name__)

#: keyword arguments every call accepts (overrides of the engine's generation settings)
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "seed", "stop")
#: chat calls also accept a session and tools
CHAT_KEYS = (*GENERATION_KEYS, "session_id", "tools", "tool_choice")
_ENGINE_FIELDS = ("model_name", "strategy", "device", "dtype")


class ToolCallError(LongctxError, ValueError):
    """A tool call was required but the reply holds none (the reasons of rejected calls are in the message)."""


@dataclass
class _Request:
    """One validated call: everything checked before any model work starts."""

    messages: list[dict]
    session_id: Optional[str]
    gen: dict[str, Any]
    specs: list[tool_mod.ToolSpec] = field(default_factory=list)
    tool_choice: str = "auto"


def _check_kwargs(kwargs: dict[str, Any], allowed: Sequence[str], where: str) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise InputError(f"{where}: unknown argument(s) {unknown} (valid: {', '.join(allowed)})")


def _tool_dict(tool: Any, i: int) -> Any:
    """A LlamaIndex BaseTool as the OpenAI-style spec the core's tool module reads (dicts pass through)."""
    metadata = getattr(tool, "metadata", None)
    if metadata is not None and hasattr(metadata, "to_openai_tool"):
        return metadata.to_openai_tool(skip_length_check=True)
    if isinstance(tool, (dict, tool_mod.ToolSpec)):
        return tool
    raise InputError(f"tools[{i}]: expected a llama_index BaseTool or a JSON-schema dict, got {type(tool).__name__}")


def _usage(c: Completion) -> dict[str, Any]:
    return {
        "usage": {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.total_tokens,
        },
        "finish_reason": c.finish_reason,
        "stop_reason": c.stop_reason,
    }


class LongctxLLM(FunctionCallingLLM):
    """A local model under a long-context strategy, as a LlamaIndex LLM (chat, completion, streaming, async, tools).

    Construction loads nothing; the model loads on first use (or is shared with an ``Engine`` you pass in).
    ``metadata.context_window`` is the active strategy's window, so a query engine packs as much retrieved text
    as the strategy can really attend to. Chat calls take ``session_id=`` (or the session named by a
    :class:`~llama_index.memory.longctx.LongctxMemory`'s messages) to reuse that session's cache across turns.

    >>> from llama_index.core.llms import ChatMessage
    >>> from llama_index.llms.longctx import LongctxLLM
    >>> llm = LongctxLLM(model_name="smollm2-135m-instruct", strategy="full", max_new_tokens=16)
    >>> llm.metadata.context_window
    8192
    >>> llm.chat([ChatMessage(role="user", content="What is the capital of France?")]).message.content  # doctest: +SKIP
    'The capital of France is Paris.'
    """

    model_name: str = Field(DEFAULT_MODEL, min_length=1, description="Model alias, HF model directory or .gguf path.")
    strategy: Union[str, dict[str, Any]] = Field(
        "full", description="Long-context strategy: a name ('full', 'dca'...) or {name: ..., <options>}."
    )
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16.")
    max_new_tokens: Optional[int] = Field(
        None, gt=0, description="Most tokens per reply (also metadata.num_output); default: the engine's setting."
    )
    temperature: Optional[float] = Field(None, ge=0.0, description="0 = greedy; default: the engine's setting.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: Optional[int] = Field(None, ge=0, description="Sample among the k most likely tokens (0 = all).")
    seed: Optional[int] = Field(None, description="Seed for sampling (reproducible outputs).")
    stop: Optional[List[str]] = Field(None, description="Stop strings, added to the engine's own.")

    _engine: Engine = PrivateAttr()

    def __init__(self, engine: Optional[Engine] = None, **data: Any) -> None:
        for key in ("messages_to_prompt", "completion_to_prompt"):
            if data.get(key) is not None:
                raise ConfigError(
                    f"{key}: LongctxLLM renders prompts with the model's own chat template and does not use {key}; "
                    "remove it (pass formatted=True to complete() to send a prompt as is)"
                )
        if engine is not None:
            if not isinstance(engine, Engine):
                raise ConfigError(f"engine: expected a longctx_llm.Engine, got {type(engine).__name__}")
            clash = [k for k in _ENGINE_FIELDS if k in data]
            if clash:
                raise ConfigError(
                    f"{', '.join(clash)}: already set by the engine passed in ({engine!r}); give either engine= "
                    f"or {', '.join(_ENGINE_FIELDS)}"
                )
            handle = engine.model_handle
            data.update(
                model_name=engine.model_name,
                strategy=engine.strategy.describe(),
                device=handle.device,
                dtype=handle.dtype,
            )
        try:
            super().__init__(**data)
            ModelConfig(source=self.model_name, device=self.device, dtype=self.dtype)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, "LongctxLLM")) from e
        if engine is None:
            engine = Engine(self.model_name, strategy=self.strategy, device=self.device, dtype=self.dtype)
        self._engine = engine
        try:
            engine.params(**self._overrides())  # bad generation settings fail here, not at the first call
        except InputError as e:
            raise ConfigError(f"LongctxLLM: {e}") from e

    @classmethod
    def class_name(cls) -> str:
        return "LongctxLLM"

    @property
    def engine(self) -> Engine:
        """The engine that runs the model (shared with pipelines and memories built on it)."""
        return self._engine

    def _overrides(self, extra: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        own = {k: getattr(self, k) for k in GENERATION_KEYS if getattr(self, k) is not None}
        return {**own, **{k: v for k, v in (extra or {}).items() if v is not None}}

    # ---- metadata ------------------------------------------------------------------------------------------
    def _context_window(self) -> int:
        # the window, or for unbounded strategies (streaming) what they keep: packing more only feeds text that
        # is evicted before the answer
        return self._engine.attention_span

    @property
    def metadata(self) -> LLMMetadata:
        """What LlamaIndex plans prompts with (loads the model on first access: the window depends on it)."""
        has_template = bool(getattr(self._engine.tokenizer, "chat_template", None))
        return LLMMetadata(
            context_window=self._context_window(),
            num_output=self._engine.params(**self._overrides()).max_new_tokens,
            is_chat_model=has_template,
            # tools reach the model through its template, or the core's documented fallback prompt otherwise
            is_function_calling_model=has_template,
            model_name=self.model_name,
        )

    def to_payload(self) -> dict[str, Any]:
        """What instrumentation events carry. Never loads the model: the events of an async call are sent from
        the event loop, so loading there would block it (the model loads in the worker thread instead)."""
        if self._engine.model_handle.is_loaded:
            return super().to_payload()
        return {"class_name": self.class_name(), "model_name": self.model_name, "strategy": self.strategy}

    # ---- requests ------------------------------------------------------------------------------------------
    def _chat_request(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> _Request:
        _check_kwargs(kwargs, CHAT_KEYS, "chat")
        kwargs = dict(kwargs)
        session_id = kwargs.pop("session_id", None) or session_of(messages)
        raw_tools = kwargs.pop("tools", None) or []
        specs = tool_mod.normalize_tools([_tool_dict(t, i) for i, t in enumerate(raw_tools)])
        choice = tool_mod.normalize_tool_choice(kwargs.pop("tool_choice", None), specs)
        gen = self._overrides(kwargs)
        self._engine.params(**gen)  # validate now
        return _Request(to_engine_messages(messages), session_id, gen, specs, choice)

    def _open_chat(self, req: _Request) -> TextStream:
        """Start the engine's stream (in the thread that will consume it: a session's lock belongs to it)."""
        messages, template_tools = req.messages, None
        if req.specs or any(m.get("tool_calls") or m["role"] == "tool" for m in messages):
            messages, template_tools = tool_mod.prepare_messages(
                self._engine.tokenizer, messages, req.specs, req.tool_choice
            )
        return self._engine.stream_chat(messages, req.session_id, tools=template_tools, **req.gen)

    def _completion_messages(self, prompt: str) -> list[dict]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": prompt}]

    def _open_complete(self, prompt: str, formatted: bool, gen: dict[str, Any]) -> TextStream:
        """Formatted prompts (and models without a chat template) are continued as is; others become a user turn."""
        if formatted or not getattr(self._engine.tokenizer, "chat_template", None):
            return self._engine.stream(prompt, **gen)
        return self._engine.stream_chat(self._completion_messages(prompt), **gen)

    def _complete_gen(self, prompt: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"prompt: expected a non-empty string, got {prompt!r}")
        _check_kwargs(kwargs, GENERATION_KEYS, "complete")
        gen = self._overrides(kwargs)
        self._engine.params(**gen)
        return gen

    # ---- responses -----------------------------------------------------------------------------------------
    def _reply(self, completion: Completion, req: _Request) -> ChatMessage:
        if not req.specs or req.tool_choice == "none":
            return assistant_message(completion.text)
        parsed = tool_mod.parse_tool_calls(completion.text, req.specs)
        for bad in parsed.invalid:
            logger.warning("rejected tool call %r: %s", bad.get("name"), bad["error"])
        return assistant_message(parsed.content, parsed.calls, parsed.invalid)

    def _forced_call(self, req: _Request) -> ChatResponse:
        """``tool_required`` or a named ``tool_choice``: the call is certain, so the core's schema-guided decoder
        writes it (tool name among the candidates, arguments valid under the tool's schema), small model or not."""
        engine = self._engine
        messages, template_tools = tool_mod.prepare_messages(
            engine.tokenizer, req.messages, req.specs, req.tool_choice
        )
        prompt = engine.render_chat(messages, tools=template_tools)
        candidates = [s for s in req.specs if req.tool_choice in ("required", s.name)]
        call, wire = guided.decode_tool_call(
            engine, prompt + tool_mod.TOOL_CALL_OPEN, candidates, engine.params(**req.gen)
        )
        n_in, n_out = engine.count_tokens(prompt), engine.count_tokens(tool_mod.TOOL_CALL_OPEN + wire)
        raw = {
            "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
            "finish_reason": "tool_calls",
            "stop_reason": None,
        }
        return ChatResponse(message=assistant_message("", [call]), raw=raw)

    @staticmethod
    def _is_forced(req: _Request) -> bool:
        return bool(req.specs) and req.tool_choice not in ("auto", "none")

    def _chat_sync(self, req: _Request) -> ChatResponse:
        if self._is_forced(req):
            return self._forced_call(req)
        stream = self._open_chat(req)
        stream.text()
        completion = stream.completion
        return ChatResponse(message=self._reply(completion, req), raw=_usage(completion))

    def _chat_iter(self, req: _Request) -> Iterator[ChatResponse]:
        """Chat deltas; the last response (empty delta) carries usage and any tool calls."""
        if self._is_forced(req):
            yield self._forced_call(req)
            return
        stream = self._open_chat(req)
        holdback = tool_mod.ToolCallHoldback() if req.specs and req.tool_choice != "none" else None
        text = ""
        try:
            for delta in stream:
                if holdback is not None:
                    delta = holdback.push(delta)
                    if not delta:
                        continue
                text += delta
                yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)
        finally:
            stream.close()  # a consumer that stops early releases the session
        completion = stream.completion
        reply = self._reply(completion, req)
        tail = (reply.content or "")[len(text):] if (reply.content or "").startswith(text) else ""
        yield ChatResponse(message=reply, delta=tail, raw=_usage(completion))

    def _complete_sync(self, prompt: str, formatted: bool, gen: dict[str, Any]) -> CompletionResponse:
        stream = self._open_complete(prompt, formatted, gen)
        text = stream.text()
        return CompletionResponse(text=text, raw=_usage(stream.completion))

    def _complete_iter(self, prompt: str, formatted: bool, gen: dict[str, Any]) -> Iterator[CompletionResponse]:
        stream = self._open_complete(prompt, formatted, gen)
        text = ""
        try:
            for delta in stream:
                text += delta
                yield CompletionResponse(text=text, delta=delta)
        finally:
            stream.close()
        yield CompletionResponse(text=text, delta="", raw=_usage(stream.completion))

    # ---- the LlamaIndex API: sync --------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        """Answer a conversation. kwargs: generation overrides, ``session_id``, ``tools``, ``tool_choice``."""
        return self._chat_sync(self._chat_request(messages, kwargs))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        req = self._chat_request(messages, kwargs)  # bad input fails at the call, model work starts on iteration
        return self._chat_iter(req)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        """A prompt as one user turn (``formatted=True``: continue the text as is). kwargs: generation overrides."""
        return self._complete_sync(prompt, formatted, self._complete_gen(prompt, kwargs))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._complete_iter(prompt, formatted, self._complete_gen(prompt, kwargs))

    # ---- the LlamaIndex API: async (model work in a worker thread, never on the event loop) ----------------
    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        req = self._chat_request(messages, kwargs)
        return await aio.run_sync(self._chat_sync, req)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        req = self._chat_request(messages, kwargs)
        return aio.aiter_sync(lambda: self._chat_iter(req))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        gen = self._complete_gen(prompt, kwargs)
        return await aio.run_sync(self._complete_sync, prompt, formatted, gen)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        gen = self._complete_gen(prompt, kwargs)
        return aio.aiter_sync(lambda: self._complete_iter(prompt, formatted, gen))

    # ---- function calling ----------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: Optional[Union[str, ChatMessage]] = None,
        chat_history: Optional[List[ChatMessage]] = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if user_msg is not None:
            if isinstance(user_msg, str):
                user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
            messages.append(user_msg)
        if tool_required and tool_choice not in (None, "required", "any"):
            raise InputError(f"tool_required=True conflicts with tool_choice={tool_choice!r}; give one of them")
        choice = "required" if tool_required else tool_choice
        return {"messages": messages, "tools": list(tools) or None, "tool_choice": choice if tools else None, **kwargs}

    def _validate_chat_with_tools_response(
        self, response: ChatResponse, tools: Sequence[Any], allow_parallel_tool_calls: bool = False, **kwargs: Any
    ) -> ChatResponse:
        """Without parallel calls only the first call is kept; the others move to ``invalid_tool_calls``."""
        calls = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
        if allow_parallel_tool_calls or len(calls) <= 1:
            return response
        extra = response.message.additional_kwargs
        extra["invalid_tool_calls"] = [
            *extra.get("invalid_tool_calls", []),
            *[
                {"id": b.tool_call_id, "name": b.tool_name, "arguments": b.tool_kwargs,
                 "error": "parallel tool calls are not allowed (allow_parallel_tool_calls=False); only the first runs"}
                for b in calls[1:]
            ],
        ]
        response.message.blocks = [b for b in response.message.blocks if b not in calls[1:]]
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> List[ToolSelection]:
        selections = [
            ToolSelection(tool_id=b.tool_call_id or "", tool_name=b.tool_name, tool_kwargs=b.tool_kwargs)
            for b in response.message.blocks
            if isinstance(b, ToolCallBlock)
        ]
        if not selections and error_on_no_tool_call:
            rejected = response.message.additional_kwargs.get("invalid_tool_calls") or []
            why = "; ".join(f"{r.get('name')!r}: {r.get('error')}" for r in rejected)
            raise ToolCallError(
                "expected at least one tool call, the reply has none"
                + (f" (rejected calls: {why})" if why else f" (reply: {(response.message.content or '')[:200]!r})")
            )
        return selections

