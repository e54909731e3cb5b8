"""``ChatLongctx``: a LangChain chat model over a local ``longctx_llm.Engine``.

Everything model-side (chat template, long-context strategy, KV-cache reuse, sessions, sampling, stop strings,
tool prompt and parsing, schema-guided JSON) lives in the core; this class only translates between LangChain's
objects and the engine's plain dicts, so the LlamaIndex face behaves the same way.
"""

from __future__ import annotations

import json
import logging
import threading
from operator import itemgetter
from typing import Any, AsyncIterator, Callable, Iterator, Literal, Optional, Sequence, Union

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import invalid_tool_call, tool_call, tool_call_chunk
from langchain_core.output_parsers import JsonOutputKeyToolsParser, JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.runnables.config import ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, field_validator

from longctx_llm import Engine
from longctx_llm.chat import guided, turns
from longctx_llm.chat import tools as tools_mod
from longctx_llm.errors import InputError
from longctx_llm.model import DEFAULT_MODEL
from longctx_llm.runtime import aio

from ..messages import to_core_messages

logger = logging.getLogger(__name__)

#: keyword arguments a call (``invoke(..., **kwargs)`` or ``bind(**kwargs)``) may carry
CALL_OPTIONS = (
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "response_format",
    "session_id",
    "model",
)
STRUCTURED_METHODS = ("json_schema", "function_calling", "json_mode")


_Reply = turns.Reply


class ChatLongctx(BaseChatModel):
    """A LangChain chat model running a local transformers model under a long-context strategy.

    A drop-in for ``ChatHuggingFace`` that also does real async (model work in a worker thread, never on the
    event loop), honours ``stop``, reports ``usage_metadata`` from the tokenizer, calls tools through the chat
    template (``bind_tools``, ``tool_choice``), returns ``with_structured_output`` objects decoded under the
    schema, and keeps model-side state (KV cache, compressed memory) per session: pass
    ``config={"configurable": {"session_id": ...}}`` (``RunnableWithMessageHistory``) or ``thread_id``
    (LangGraph) and each turn feeds only its new tokens. Without an id every call is stateless.

    Nothing is loaded at construction; the first call loads the model (shared by every engine naming it).

    Example:
        .. code-block:: python

            from langchain_longctx import ChatLongctx

            llm = ChatLongctx(model="smollm2-135m-instruct", strategy="full", max_tokens=32, temperature=0)
            llm.invoke("What is the capital of France?").content   # 'The capital of France is Paris.'
    """

    model: str = Field(
        DEFAULT_MODEL, min_length=1, description="Model alias, HF model directory or .gguf path (loaded locally)."
    )
    strategy: Union[str, dict] = Field(
        "full", description="Long-context strategy: a name (full, dca, streaming, rcc...) or {name: ..., options}."
    )
    memory: Union[str, dict] = Field("buffer", description="Session memory: a name (buffer, ccm...) or {name: ...}.")
    max_tokens: Optional[int] = Field(None, gt=0, description="Most tokens to generate (default: the engine's).")
    temperature: Optional[float] = Field(None, ge=0.0, description="Sampling temperature; 0 = greedy.")
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: Optional[int] = Field(None, ge=0, description="Sample among the k most likely tokens (0 = all).")
    seed: Optional[int] = Field(None, description="Seed for sampling, for reproducible outputs.")
    stop: Optional[list[str]] = Field(None, description="Stop strings (not included in the output).")
    system_prompt: Optional[str] = Field(
        None, description="A system message put first when the conversation has none."
    )
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    dtype: str = Field("auto", description="auto, float32, bfloat16 or float16.")
    streaming: bool = Field(False, description="invoke() streams internally, so callbacks get every token.")
    timeout: Optional[float] = Field(
        None, description="Accepted for drop-in compatibility with hosted models; a local call has no request to time out."
    )
    max_retries: Optional[int] = Field(
        None, description="Accepted for drop-in compatibility with hosted models; a local call is never retried."
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)

    _engine: Optional[Engine] = PrivateAttr(default=None)
    _engine_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: Optional[list[str]]) -> Optional[list[str]]:
        for s in v or []:
            if not isinstance(s, str) or not s:
                raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
        return v

    @field_validator("strategy", "memory")
    @classmethod
    def _check_plugin(cls, v: Union[str, dict]) -> Union[str, dict]:
        if isinstance(v, dict) and not isinstance(v.get("name"), str):
            raise ValueError(f"a plugin mapping needs a 'name', got {v!r}")
        return v

    # ---- the engine ----------------------------------------------------------------------------------------
    @classmethod
    def from_engine(cls, engine: Engine, **fields: Any) -> "ChatLongctx":
        """A chat model on an existing engine (its model, strategy, memory, sessions and generation defaults)."""
        fields.setdefault("model", engine.model_name)
        fields.setdefault("strategy", engine.strategy.describe())
        fields.setdefault("memory", engine.memory.describe())
        obj = cls(**fields)
        obj._engine = engine
        return obj

    @property
    def engine(self) -> Engine:
        """The engine (built on first use; loading the model waits for the first generation)."""
        if self._engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = Engine(
                        self.model, strategy=self.strategy, memory=self.memory, device=self.device, dtype=self.dtype
                    )
        return self._engine

    # ---- LangChain metadata --------------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "longctx"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "strategy": self.strategy,
            "memory": self.memory,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
        }

    def _get_ls_params(self, stop: Optional[list[str]] = None, **kwargs: Any):
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "longctx"
        params["ls_model_name"] = kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        stops = [*(self.stop or []), *(stop or [])]
        if stops:
            params["ls_stop"] = stops
        return params

    # ---- sessions from the run config ---------------------------------------------------------------------
    @staticmethod
    def _session_kwargs(config: Optional[RunnableConfig], kwargs: dict) -> dict:
        """Take ``session_id`` (RunnableWithMessageHistory) or ``thread_id`` (LangGraph) from the config."""
        if kwargs.get("session_id") is not None:
            return kwargs
        configurable = ensure_config(config).get("configurable") or {}
        sid = configurable.get("session_id", configurable.get("thread_id"))
        return {**kwargs, "session_id": str(sid)} if sid is not None else kwargs

    def invoke(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *, stop=None, **kwargs):
        return super().invoke(input, config, stop=stop, **self._session_kwargs(config, kwargs))

    async def ainvoke(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *, stop=None, **kwargs):
        return await super().ainvoke(input, config, stop=stop, **self._session_kwargs(config, kwargs))

    def stream(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *, stop=None, **kwargs):
        return super().stream(input, config, stop=stop, **self._session_kwargs(config, kwargs))

    async def astream(self, input: LanguageModelInput, config: Optional[RunnableConfig] = None, *, stop=None, **kwargs):
        async for chunk in super().astream(input, config, stop=stop, **self._session_kwargs(config, kwargs)):
            yield chunk

    # ---- one request ----------------------------------------------------------------------------------------
    def _request(self, messages: Sequence[BaseMessage], stop: Optional[list[str]], kwargs: dict) -> turns.TurnRequest:
        unknown = sorted(set(kwargs) - set(CALL_OPTIONS))
        if unknown:
            raise InputError(f"ChatLongctx: unknown call options {unknown} (valid: {', '.join(CALL_OPTIONS)})")
        model = kwargs.get("model")
        if model is not None and model != self.model:
            raise InputError(
                f"model: this ChatLongctx runs {self.model!r}; a per-call model {model!r} is not supported "
                "(build another ChatLongctx(model=...))"
            )
        if kwargs.get("parallel_tool_calls"):
            raise InputError(
                "parallel_tool_calls: True is not supported (this model makes at most one tool call per turn; "
                "valid: False or None)"
            )
        msgs = to_core_messages(messages)
        if self.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return turns.prepare(
            self.engine,
            msgs,
            tools=kwargs.get("tools"),
            tool_choice=kwargs.get("tool_choice"),
            response_format=kwargs.get("response_format"),
            session_id=kwargs.get("session_id"),
            max_new_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            top_p=kwargs.get("top_p", self.top_p),
            top_k=kwargs.get("top_k", self.top_k),
            seed=kwargs.get("seed", self.seed),
            stop=[*(self.stop or []), *(stop or [])] or None,
        )

    def _events(self, messages: Sequence[BaseMessage], stop: Optional[list[str]], kwargs: dict) -> Iterator[Any]:
        """Text deltas (str), then one reply (:mod:`longctx_llm.chat.turns`, shared with the OpenAI server)."""
        req = self._request(messages, stop, kwargs)
        yield from turns.events(self.engine, req, self.model)

    # ---- LangChain's four entry points ---------------------------------------------------------------------
    def _chunk(self, ev: Any) -> ChatGenerationChunk:
        if isinstance(ev, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=ev))
        chunks = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["arguments"]), id=c["id"], index=i)
            for i, c in enumerate(ev.calls)
        ]
        chunks += [
            tool_call_chunk(name=c["name"], args=c["arguments"], id=c["id"], index=len(ev.calls) + i)
            for i, c in enumerate(ev.invalid)
        ]
        message = AIMessageChunk(
            content=ev.tail,
            tool_call_chunks=chunks,
            usage_metadata=_usage(ev),
            response_metadata=_response_metadata(ev),
            chunk_position="last",
        )
        return ChatGenerationChunk(message=message, generation_info={"finish_reason": ev.finish_reason})

    def _result(self, ev: "_Reply") -> ChatResult:
        message = AIMessage(
            content=ev.content,
            tool_calls=[tool_call(name=c["name"], args=c["arguments"], id=c["id"]) for c in ev.calls],
            invalid_tool_calls=[
                invalid_tool_call(name=c["name"], args=c["arguments"], id=c["id"], error=c["error"])
                for c in ev.invalid
            ],
            usage_metadata=_usage(ev),
            response_metadata=_response_metadata(ev),
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info={"finish_reason": ev.finish_reason})])

    def _generate(self, messages, stop=None, run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs):
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))
        return self._result(_last(self._events(messages, stop, kwargs)))

    def _stream(self, messages, stop=None, run_manager: Optional[CallbackManagerForLLMRun] = None, **kwargs):
        for ev in self._events(messages, stop, kwargs):
            chunk = self._chunk(ev)
            if run_manager is not None and isinstance(ev, str):
                run_manager.on_llm_new_token(ev, chunk=chunk)
            yield chunk

    async def _agenerate(self, messages, stop=None, run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                         **kwargs):
        if self.streaming:
            return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager, **kwargs))
        reply = await aio.run_sync(lambda: _last(self._events(messages, stop, kwargs)))
        return self._result(reply)

    async def _astream(self, messages, stop=None, run_manager: Optional[AsyncCallbackManagerForLLMRun] = None,
                       **kwargs) -> AsyncIterator[ChatGenerationChunk]:
        async for ev in aio.aiter_sync(lambda: self._events(messages, stop, kwargs)):
            chunk = self._chunk(ev)
            if run_manager is not None and isinstance(ev, str):
                await run_manager.on_llm_new_token(ev, chunk=chunk)
            yield chunk

    # ---- tools and structured output ------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[Union[dict[str, Any], type, Callable, BaseTool]],
        *,
        tool_choice: Optional[Union[str, dict, bool]] = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (rendered through the chat template, or the documented fallback prompt of
        :mod:`longctx_llm.chat.tools`). ``tool_choice``: "auto" (default), "none", "any"/"required" or a tool name;
        a forced choice is decoded under the tool's argument schema, so the call is always well formed."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        specs = tools_mod.normalize_tools(formatted)
        choice = tools_mod.normalize_tool_choice(tool_choice, specs)
        if choice not in ("auto", "none"):
            for s in specs if choice == "required" else [s for s in specs if s.name == choice]:
                try:
                    guided.check_schema(s.parameters)
                except InputError as e:
                    raise InputError(f"tool {s.name!r} cannot be called with tool_choice={tool_choice!r}: {e}") from e
        return super().bind(tools=formatted, tool_choice=choice, **kwargs)

    def with_structured_output(
        self,
        schema: Optional[Union[dict, type]] = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: Optional[bool] = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Replies as instances of ``schema`` (pydantic class, TypedDict or JSON schema).

        ``json_schema`` / ``json_mode``: the reply text is decoded under the schema (see
        :mod:`longctx_llm.chat.guided`); ``function_calling``: a forced tool call with the schema as its arguments.
        A schema the decoder cannot produce raises :class:`~longctx_llm.errors.InputError` here, not later.
        """
        if kwargs:
            raise ValueError(f"with_structured_output: unsupported arguments {sorted(kwargs)}")
        if method not in STRUCTURED_METHODS:
            raise InputError(f"method: {method!r} is not supported (valid: {', '.join(STRUCTURED_METHODS)})")
        if schema is None:
            raise InputError(
                f"schema: {method} needs a schema on this local model (the decoder writes the JSON from it); got None"
            )
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        if method == "function_calling":
            name = convert_to_openai_tool(schema)["function"]["name"]
            llm = self.bind_tools([schema], tool_choice=name, ls_structured_output_format=ls_format)
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        else:
            json_schema = convert_to_json_schema(schema)
            guided.check_schema(json_schema)
            fmt = {"type": "json_schema", "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema}}
            llm = self.bind(response_format=fmt, ls_structured_output_format=ls_format)
            parser = PydanticOutputParser(pydantic_object=schema) if is_pydantic else JsonOutputParser()
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks([fallback], exception_key="parsing_error")


# ---- helpers --------------------------------------------------------------------------------------------------


_response_schema = turns.response_schema


def _usage(ev: _Reply) -> dict:
    return {
        "input_tokens": ev.input_tokens,
        "output_tokens": ev.output_tokens,
        "total_tokens": ev.input_tokens + ev.output_tokens,
    }


def _response_metadata(ev: _Reply) -> dict:
    return {"finish_reason": ev.finish_reason, "model_name": ev.model_name}


_last = turns.last
