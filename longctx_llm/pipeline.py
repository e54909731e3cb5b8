"""Declarative pipelines: a YAML file becomes the component it declares.

Components are plugins too (entry-point group ``longctx_llm.components``): the core ships ``chat``; the
integration packages add ``langchain.chat_model``, ``llama_index.llm``, ``llama_index.query_engine``... so the core
never imports LangChain or LlamaIndex.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from .config import PipelineConfig, load_config, parse_config, validate_plugin_options
from .runtime.engine import Engine
from .runtime.stream import TextStream


class ComponentOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Component(ABC):
    """How a pipeline's ``component`` is built and how the CLI talks to it."""

    name: ClassVar[str]
    Options: ClassVar[type[ComponentOptions]] = ComponentOptions

    @classmethod
    @abstractmethod
    def build(cls, engine: Engine, options: ComponentOptions, config: PipelineConfig) -> Any:
        """Return the user-facing object (a LangChain chat model, a LlamaIndex query engine...)."""

    @classmethod
    @abstractmethod
    def respond(cls, obj: Any, prompt: str, session_id: str = "default") -> Iterator[str]:
        """Answer one user turn as text deltas (used by ``longctx run`` and ``longctx chat``)."""

    @classmethod
    def load(cls, obj: Any) -> None:
        """Load the model now (``longctx chat`` does before its first prompt: a bad model fails at the start, and
        loading's progress bar never lands in the middle of a reply); by default the engine's model."""
        engine = getattr(obj, "engine", None)
        if engine is not None:
            _ = engine.loaded

    @classmethod
    def reset(cls, obj: Any, session_id: str = "default") -> None:
        """Forget a session (``/reset`` in ``longctx chat``); by default the engine's session of that id."""
        engine = getattr(obj, "engine", None)
        if engine is not None:
            engine.reset_session(session_id)


class ChatOptions(ComponentOptions):
    system_prompt: Optional[str] = Field(None, description="A system message placed before the conversation.")


class ChatPipeline:
    """The core chat component: multi-turn chat over an engine with per-session state.

    >>> bot = load_pipeline("examples/pipelines/quickstart.yaml")   # doctest: +SKIP
    >>> bot.invoke("What is the capital of France?")                 # doctest: +SKIP
    'The capital of France is Paris.'
    """

    def __init__(self, engine: Engine, system_prompt: Optional[str] = None):
        self.engine = engine
        self.system_prompt = system_prompt

    def _messages(self, prompt: str, session_id: str) -> list[dict]:
        session = self.engine.session(session_id)
        history = list(session.history)
        if not history and self.system_prompt:
            history.append({"role": "system", "content": self.system_prompt})
        return [*history, {"role": "user", "content": prompt}]

    def stream(self, prompt: str, session_id: str = "default", **gen: Any) -> TextStream:
        return self.engine.stream_chat(self._messages(prompt, session_id), session_id, **gen)

    def invoke(self, prompt: str, session_id: str = "default", **gen: Any) -> str:
        return self.stream(prompt, session_id, **gen).text()

    def reset(self, session_id: str = "default") -> None:
        self.engine.reset_session(session_id)


class ChatComponent(Component):
    name = "chat"
    Options = ChatOptions

    @classmethod
    def build(cls, engine, options, config):
        return ChatPipeline(engine, system_prompt=options.system_prompt)

    @classmethod
    def respond(cls, obj, prompt, session_id="default"):
        return obj.stream(prompt, session_id)


def build_engine(config: PipelineConfig) -> Engine:
    return Engine.from_config(config)


def load_pipeline(source: Union[str, Path, dict, PipelineConfig]) -> Any:
    """Build the component a pipeline declares (nothing is loaded until first use)."""
    obj, _ = load_pipeline_with_component(source)
    return obj


def load_pipeline_with_component(source: Union[str, Path, dict, PipelineConfig]) -> tuple[Any, type[Component]]:
    config = load_config(source) if isinstance(source, (str, Path)) else parse_config(source)
    component_cls, options = validate_plugin_options("component", config.component, "component")
    engine = build_engine(config)
    if options is None:
        options = ComponentOptions()
    return component_cls.build(engine, options, config), component_cls
