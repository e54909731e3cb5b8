"""YAML pipeline configuration: pydantic models (``extra="forbid"``), read with ``yaml.safe_load``.

A pipeline file declares the model, the strategy, the memory, generation defaults and the component::

    model: {source: smollm2-135m-instruct, device: auto, dtype: auto}
    strategy: {name: full}
    memory: {name: buffer}
    generation: {max_new_tokens: 128, temperature: 0.0}
    component: chat

Strategy, memory and component options are validated by the plugin's own ``Options`` model, and errors name the
field path and the bad value (``strategy.chunk_size: Input should be greater than 0, got -3``). The file can
never name a Python class: plugins are looked up by name among installed entry points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from . import registry
from .errors import ConfigError, PluginError
from .models import DEFAULT_MODEL, DTYPES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    source: str = Field(DEFAULT_MODEL, min_length=1, description="Alias, HF model directory, or path to a .gguf file.")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    dtype: Literal[tuple(DTYPES)] = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU.")  # type: ignore[valid-type]

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {v!r}")
        return v


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, gt=0, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens (0 = all).")
    seed: Optional[int] = Field(None, description="Seed for sampling (reproducible outputs).")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the output).")

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: list[str]) -> list[str]:
        for s in v:
            if s == "":
                raise ValueError("stop strings must be non-empty, got ''")
        return v


class PluginConfig(BaseModel):
    """``{name: ..., <options>}``; the options are checked against the plugin's own Options model."""

    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1)

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _as_plugin(v: Any) -> Any:
    return {"name": v} if isinstance(v, str) else v


class PipelineConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: Union[PluginConfig, list[PluginConfig]] = Field(
        default_factory=lambda: PluginConfig(name="full"),
        description="One strategy, or two composed: [cache owner, attention] (see longctx_llm.compose).",
    )
    memory: PluginConfig = Field(default_factory=lambda: PluginConfig(name="buffer"))
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    component: PluginConfig = Field(default_factory=lambda: PluginConfig(name="chat"))
    #: the YAML file this config was read from (set by :func:`load_config`; None for mappings), so components can
    #: resolve relative paths (a documents folder) next to the file
    _source_path: Optional[Path] = PrivateAttr(None)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            for key in ("strategy", "memory", "component"):
                if key in data:
                    data[key] = _as_plugin(data[key])
            if isinstance(data.get("strategy"), list):
                data["strategy"] = [_as_plugin(v) for v in data["strategy"]]
        return data

    @property
    def source_path(self) -> Optional[Path]:
        """The YAML file this config came from (None when built from a mapping)."""
        return self._source_path


def _fmt_loc(prefix: str, loc: tuple) -> str:
    parts = [prefix] if prefix else []
    parts += [str(p) for p in loc]
    return ".".join(parts) or "<root>"


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    lines = []
    for e in err.errors():
        loc = _fmt_loc(prefix, e.get("loc", ()))
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}, got {e.get('input')!r}")
    return "; ".join(lines)


def validate_plugin_options(kind: str, cfg: PluginConfig, prefix: str) -> tuple[type, BaseModel]:
    """Resolve a plugin by name and validate its options; returns (plugin class, options)."""
    try:
        plugin = registry.get(kind, cfg.name)
    except PluginError as e:
        raise ConfigError(f"{prefix}.name: {e}") from e
    options_cls = getattr(plugin, "Options", None)
    if options_cls is None:
        if cfg.options():
            raise ConfigError(f"{prefix}: {kind} {cfg.name!r} takes no options, got {sorted(cfg.options())}")
        return plugin, None
    try:
        return plugin, options_cls(**cfg.options())
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix)) from e


def _load_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        raise ConfigError(
            f"{where}: tag not allowed ({e.problem}); pipeline files are plain YAML and cannot name Python objects"
        ) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: YAML syntax error: {e}") from e


def parse_config(data: Union[dict, PipelineConfig, None], *, check_plugins: bool = True) -> PipelineConfig:
    if isinstance(data, PipelineConfig):
        cfg = data
    else:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"<root>: a pipeline must be a mapping, got {type(data).__name__}")
        try:
            cfg = PipelineConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e)) from e
    if check_plugins:
        if isinstance(cfg.strategy, list):
            if len(cfg.strategy) != 2:
                raise ConfigError(f"strategy: a list composes exactly 2 strategies, got {len(cfg.strategy)}")
            for i, item in enumerate(cfg.strategy):
                validate_plugin_options("strategy", item, f"strategy[{i}]")
        else:
            validate_plugin_options("strategy", cfg.strategy, "strategy")
        validate_plugin_options("memory", cfg.memory, "memory")
        validate_plugin_options("component", cfg.component, "component")
    return cfg


def load_config(path: Union[str, Path], *, check_plugins: bool = True) -> PipelineConfig:
    """Read and validate a YAML pipeline file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise ConfigError(f"pipeline file {str(p)!r} does not exist") from e
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"pipeline file {str(p)!r} cannot be read: {e}") from e
    data = _load_yaml(text, str(p))
    try:
        cfg = parse_config(data, check_plugins=check_plugins)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from e
    cfg._source_path = p.resolve()
    return cfg


def json_schema() -> dict[str, Any]:
    """JSON Schema for pipeline files (for editors); plugin options are listed per installed plugin."""
    schema = PipelineConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    for kind in ("strategy", "memory"):
        variants = []
        for info in registry.available(kind):
            try:
                plugin = info.load()
            except PluginError:
                continue
            options = getattr(plugin, "Options", None)
            sub = options.model_json_schema() if options is not None else {"type": "object", "properties": {}}
            sub.setdefault("properties", {})["name"] = {"const": info.name}
            sub["required"] = ["name", *sub.get("required", [])]
            sub["additionalProperties"] = False
            sub["title"] = f"{kind} {info.name}"
            for k, v in sub.pop("$defs", {}).items():
                defs[k] = v
            variants.append(sub)
        if variants:
            one = [{"type": "string"}, *variants]
            if kind == "strategy":
                one.append({"type": "array", "minItems": 2, "maxItems": 2, "items": {"anyOf": one[:]}})
            schema["properties"][kind] = {"anyOf": one}
    return schema


def dump_schema() -> str:
    return json.dumps(json_schema(), indent=2)
