"""longctx-llm: long-context strategies (DCA, RCC, CCM, StreamingLLM) for local transformers models.

Quickstart::

    from longctx_llm import load_pipeline
    bot = load_pipeline("examples/pipelines/quickstart.yaml")
    print(bot.invoke("What is the capital of France?"))
"""

from ._version import __version__
from .config import GenerationConfig, PipelineConfig, load_config
from .runtime.engine import Engine
from .runtime.stream import TextStream
from .errors import (
    AdapterError,
    ConfigError,
    ContextWindowError,
    InputError,
    LongctxError,
    ModelLoadError,
    PluginError,
    ResourceError,
    SessionError,
    UnsupportedModelError,
)
from .model.loading import ModelHandle
from .pipeline import ChatPipeline, Component, ComponentOptions, load_pipeline
from .runtime.generation import Completion
from .runtime.kv_state import KVCacheState
from .runtime.memory import Memory, MemoryOptions, MemoryState
from .runtime.row_pool import RowPool
from .runtime.strategy import Capabilities, Strategy, StrategyOptions, StrategyState

__all__ = [
    "__version__",
    "AdapterError",
    "Capabilities",
    "ChatPipeline",
    "Completion",
    "Component",
    "ComponentOptions",
    "ConfigError",
    "ContextWindowError",
    "Engine",
    "GenerationConfig",
    "InputError",
    "KVCacheState",
    "LongctxError",
    "Memory",
    "MemoryOptions",
    "MemoryState",
    "ModelHandle",
    "ModelLoadError",
    "PipelineConfig",
    "PluginError",
    "ResourceError",
    "RowPool",
    "SessionError",
    "Strategy",
    "StrategyOptions",
    "StrategyState",
    "TextStream",
    "UnsupportedModelError",
    "load_config",
    "load_pipeline",
]
