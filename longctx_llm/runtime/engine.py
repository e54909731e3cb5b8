"""The Engine: a model, a strategy, a memory, generation defaults and sessions.

Every face of the package (CLI, LangChain, LlamaIndex, the server) is a thin layer over this class. It never
branches on a strategy's name: it asks the strategy for its window, capabilities and a state, and runs the one loop.

The class is read in four parts: this module (construction, the model and its tokenizer, generation parameters, the
window check), :class:`~.completion.Completions` (stateless prompts and scoring), :class:`~.conversation.Conversations`
(chat and raw turns through a session's cache) and :class:`~.sessions.SessionStore` (live sessions, their locks,
saving and restoring).

>>> engine = Engine("smollm2-135m-instruct", strategy="full")          # loads nothing yet
>>> engine.chat([{"role": "user", "content": "What is the capital of France?"}]).text  # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence, Union

from pydantic import ValidationError

from .. import registry
from ..config import BatchingConfig, GenerationConfig, PipelineConfig, PluginConfig, format_validation_error, validate_plugin_options
from ..errors import ConfigError, ContextWindowError, InputError
from ..model.loading import DEFAULT_MODEL, LoadedModel, ModelHandle
from . import templates, tensor_parallel
from .completion import Completions
from .conversation import Conversations
from .decoding import Decoding
from .memory import Memory
from .sessions import SessionStore
from .strategy import Strategy

logger = logging.getLogger(__name__)

PluginSpec = Union[str, dict, PluginConfig, Strategy, Memory, None]


def _build_plugin(kind: str, spec: PluginSpec, default: str):
    base = Strategy if kind == "strategy" else Memory
    if isinstance(spec, base):
        return spec
    if kind == "strategy" and isinstance(spec, (list, tuple)):
        from .compose import StackedStrategy

        return StackedStrategy([_build_plugin(kind, item, default) for item in spec])
    if spec is None:
        spec = default
    if isinstance(spec, str):
        if not spec.strip():
            raise ConfigError(f"{kind}: empty name (valid: {', '.join(registry.names(kind))})")
        spec = PluginConfig(name=spec)
    elif isinstance(spec, dict):
        try:
            spec = PluginConfig.model_validate(spec)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, kind)) from e
    if not isinstance(spec, PluginConfig):
        raise ConfigError(f"{kind}: expected a name, a mapping or a {base.__name__}, got {type(spec).__name__}")
    cls, options = validate_plugin_options(kind, spec, kind)
    return cls(options) if options is not None else cls()


class Engine(Completions, Conversations, SessionStore, Decoding):
    """Runs prompts and chats on a local model under a long-context strategy."""

    def __init__(
        self,
        model: Union[str, ModelHandle, LoadedModel] = DEFAULT_MODEL,
        strategy: PluginSpec = "full",
        memory: PluginSpec = "buffer",
        generation: Union[GenerationConfig, dict, None] = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        batching: Union[BatchingConfig, dict, None] = None,
    ):
        if isinstance(model, LoadedModel):
            self.model_handle = ModelHandle.from_loaded(model)
        elif isinstance(model, ModelHandle):
            self.model_handle = model
        elif isinstance(model, str):
            self.model_handle = ModelHandle(model, device=device, dtype=dtype)
        else:
            raise ConfigError(f"model: expected an alias, a path or a ModelHandle, got {type(model).__name__}")
        self.strategy: Strategy = _build_plugin("strategy", strategy, "full")
        self.memory: Memory = _build_plugin("memory", memory, "buffer")
        if isinstance(generation, dict):
            try:
                generation = GenerationConfig(**generation)
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, "generation")) from e
        elif generation is not None and not isinstance(generation, GenerationConfig):
            raise ConfigError(
                f"generation: expected a mapping or a GenerationConfig, got {type(generation).__name__} {generation!r:.80}"
            )
        self.generation = generation or GenerationConfig()
        if isinstance(batching, dict):
            try:
                batching = BatchingConfig(**batching)
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, "batching")) from e
        elif batching is not None and not isinstance(batching, BatchingConfig):
            raise ConfigError(f"batching: expected a mapping or a BatchingConfig, got {type(batching).__name__}")
        self.batching = batching or BatchingConfig()
        self._init_sessions()
        self._validated = False

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "Engine":
        """The engine a pipeline declares (nothing loaded yet); under ``torchrun -m longctx_llm.cli`` with
        ``model.tp`` > 1, rank 0's engine runs every model call on all the processes (:mod:`.tensor_parallel`)."""
        m = config.model
        engine = cls(
            ModelHandle(m.source, m.device, m.dtype, m.trust_remote_code, tp=m.tp),
            strategy=config.strategy,
            memory=config.memory,
            generation=config.generation,
            batching=config.batching,
        )
        return tensor_parallel.adopt(engine, config)

    # ---- model ---------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel:
        loaded = self.model_handle.get()
        if not self._validated:
            self.strategy.validate(loaded.info)
            self.strategy.prepare(loaded)
            self.memory.validate(self.strategy, loaded)
            self._validated = True
        return loaded

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model_name(self) -> str:
        return self.model_handle.source

    @property
    def context_window(self) -> Optional[int]:
        """Tokens the model attends to under the active strategy (None: unbounded)."""
        return self.strategy.context_window(self.loaded.info)

    @property
    def attention_span(self) -> int:
        """Tokens the model attends to at once under the strategy (an integer even for unbounded strategies)."""
        return self.strategy.attention_span(self.loaded.info)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        text = templates.check_text(text, "text")
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, add_special_tokens=False))

    def render_chat(self, messages: Sequence[Any], *, tools=None, add_generation_prompt: bool = True) -> str:
        msgs = templates.normalize_messages(messages)
        return templates.render(self.tokenizer, msgs, tools=tools, add_generation_prompt=add_generation_prompt)

    # ---- parameters and checks ------------------------------------------------------------------------------
    def params(self, **overrides: Any) -> GenerationConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "stop" in overrides:
            stop = overrides["stop"]
            if isinstance(stop, str):
                stop = [stop]
            elif not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) for x in stop):
                raise InputError(f"stop: expected a string or a list of strings, got {stop!r:.80}")
            stop = list(stop)
            overrides["stop"] = list(dict.fromkeys([*self.generation.stop, *stop]))
        if not overrides:
            return self.generation
        try:
            return GenerationConfig(**{**self.generation.model_dump(), **overrides})
        except ValidationError as e:
            raise InputError(format_validation_error(e, "generation")) from e

    def _strategies_fitting(self, n: int) -> list[str]:
        fits = []
        info = self.loaded.info
        for p in registry.available("strategy"):
            try:
                s = p.load()()
                s.validate(info)
                w = s.context_window(info)
            except Exception:  # noqa: BLE001 - a strategy that needs options or weights cannot be listed
                continue
            if w is None or w >= n:
                fits.append(f"{p.name} ({'unbounded' if w is None else w})")
        return fits

    def check_fits(self, n_tokens: int) -> None:
        if n_tokens <= 0:
            raise InputError("prompt: empty prompt (0 tokens); give some text")
        if self.strategy.capabilities.unbounded:
            return
        window = self.context_window
        if window is not None and n_tokens > window:
            fits = self._strategies_fitting(n_tokens)
            hint = f"installed strategies that fit it: {', '.join(fits)}" if fits else "no installed strategy fits it"
            raise ContextWindowError(
                f"prompt has {n_tokens} tokens but strategy {self.strategy.name!r} has a {window}-token window "
                f"on {self.model_name}; {hint}"
            )

    def __repr__(self) -> str:
        return f"Engine(model={self.model_handle!r}, strategy={self.strategy!r}, memory={self.memory.describe()})"
