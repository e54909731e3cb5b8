"""YAML pipeline configuration: pydantic models (``extra="forbid"``), read with ``yaml.safe_load``.

A pipeline file declares the model, the strategy, the memory, generation defaults and the component::

    model: {source: smollm2-135m-instruct, device: auto, dtype: auto}   # tp: 2 shards it over 2 devices
    strategy: {name: full}
    memory: {name: buffer}
    generation: {max_new_tokens: 128, temperature: 0.0}
    component: chat

Strategy, memory and component options are validated by the plugin's own ``Options`` model, and errors name the
field path and the bad value (``strategy.chunk_size: Input should be greater than 0, got -3``). The file can
never name a Python class: plugins are looked up by name among installed entry points.

Files are untrusted input: the loader is a safe one (no Python tags) with limits on size (``MAX_YAML_BYTES``), on the
number of nodes counting what aliases expand to (``MAX_YAML_NODES``, so a "billion laughs" file fails at once), and
on nesting (``MAX_YAML_DEPTH``); a key given twice in one mapping is an error naming the key and its line.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from . import registry
from .errors import ConfigError, PluginError
from .model.loading import DEFAULT_MODEL, DTYPES


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Strict):
    source: str = Field(DEFAULT_MODEL, min_length=1, description="Alias, HF model directory, or path to a .gguf file.")
    device: str = Field("auto", description="auto (cuda if available, else cpu), cpu, cuda or cuda:N.")
    dtype: Literal[tuple(DTYPES)] = Field("auto", description="auto: bfloat16 on GPU, float32 on CPU.")  # type: ignore[valid-type]
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model folder (config.json auto_map). Off unless you trust the "
        "folder; never asked interactively.",
    )
    tp: int = Field(
        1,
        ge=1,
        description="Tensor parallel: shard the model over this many devices of one host (GPUs, or CPU processes), "
        "each process computing its share of the attention heads; start the command with torchrun "
        "--nproc-per-node TP (docs: README, Tensor parallel).",
    )

    @field_validator("tp", mode="before")
    @classmethod
    def _tp(cls, v: Any) -> Any:
        if isinstance(v, bool):  # YAML's `tp: yes` is not a number of devices
            raise ValueError("must be a number of processes (1, 2, ...)")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {_short(v)}")
        return v


class GenerationConfig(_Strict):
    max_new_tokens: int = Field(256, gt=0, description="Most tokens to generate.")
    temperature: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="0 = greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=0, description="Sample among the k most likely tokens (0 = all).")
    seed: Optional[int] = Field(None, ge=0, le=2**63 - 1, description="Seed for sampling (reproducible outputs).")
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


class BatchingConfig(_Strict):
    """Continuous batching (:mod:`longctx_llm.runtime.batching`): concurrent requests' decode steps run as one
    forward; requests join and leave between steps; prompts are fed in pieces between the running decodes."""

    max_batch: int = Field(
        16, gt=0, le=1024,
        description="Most requests decoding at once (1: no scheduler, every request runs on its own, as before).",
    )
    max_batch_tokens: int = Field(
        512, gt=0, le=1 << 20,
        description="Prompt tokens fed per scheduler step between decode steps (a long prompt does not stall the "
        "others).",
    )
    max_queue: int = Field(
        256, ge=0, le=1 << 20, description="Requests waiting beyond max_batch; one more waits for room, or is refused "
        "with when_full: refuse.",
    )
    when_full: Literal["wait", "refuse"] = Field(
        "wait", description="A request beyond max_batch + max_queue: 'wait' for room (in-process calls, e.g. "
        "LangChain abatch of many inputs), or 'refuse' with a BusyError ('longctx serve' sets it: 503 + Retry-After).",
    )


class PipelineConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: Union[PluginConfig, list[PluginConfig]] = Field(
        default_factory=lambda: PluginConfig(name="full"),
        description="One strategy, or two composed: [cache owner, attention] (see longctx_llm.runtime.compose).",
    )
    memory: PluginConfig = Field(default_factory=lambda: PluginConfig(name="buffer"))
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
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


def format_validation_error(err: ValidationError, prefix: str = "", limit: int = 10) -> str:
    """One line per problem (the first ``limit``), each value quoted at most ``_QUOTE`` characters long."""
    errors = err.errors()
    lines = []
    for e in errors[:limit]:
        loc = _cut(_fmt_loc(prefix, e.get("loc", ())))
        msg = _cut(str(e.get("msg", "invalid")), 2 * _QUOTE)
        if e.get("type") == "extra_forbidden":
            msg = "unknown field"
        lines.append(f"{loc}: {msg}, got {_short(e.get('input'))}")
    if len(errors) > limit:
        lines.append(f"and {len(errors) - limit} more")
    return "; ".join(lines)


def validate_plugin_options(kind: str, cfg: PluginConfig, prefix: str) -> tuple[type, BaseModel]:
    """Resolve a plugin by name and validate its options; returns (plugin class, options)."""
    try:
        plugin = registry.get(kind, cfg.name)
    except PluginError as e:
        raise ConfigError(f"{prefix}.name: {_cut(str(e), 5 * _QUOTE)}") from e
    options_cls = getattr(plugin, "Options", None)
    if options_cls is None:
        if cfg.options():
            got = _short(sorted(cfg.options()))
            raise ConfigError(f"{prefix}: {kind} {_short(cfg.name)} takes no options, got {got}")
        return plugin, None
    try:
        return plugin, options_cls(**cfg.options())
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix)) from e


#: the largest pipeline file read (bytes), and the largest text parsed (characters)
MAX_YAML_BYTES = 1_000_000
#: the most nodes a document may hold, counting each alias as the whole subtree it repeats
MAX_YAML_NODES = 10_000
#: the deepest nesting of sequences and mappings
MAX_YAML_DEPTH = 64
#: how much of a bad value an error message quotes
_QUOTE = 200


def _cut(text: str, limit: int = _QUOTE) -> str:
    """``text`` cut to ``limit`` characters (messages never echo unbounded input)."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = _QUOTE) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    return _cut(repr(value), limit)


def _line(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown position"


class _YAMLLimit(Exception):
    """A document broke one of the loader's limits (converted to ConfigError by :func:`_load_yaml`)."""

    def __init__(self, message: str, mark: Any = None):
        super().__init__(message)
        self.message, self.mark = message, mark


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader with a node budget (aliases count as what they expand to), a depth limit and no duplicate keys."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> expanded size, once the node is complete

    def _spend(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_YAML_NODES:
            raise _YAMLLimit(
                f"the document expands to more than {MAX_YAML_NODES} nodes (aliases count as the nodes they repeat); "
                "a pipeline file is a small mapping",
                mark,
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node))
            if size is None:
                raise _YAMLLimit(f"alias *{_cut(str(event.anchor), 60)} refers to a node that contains it "
                                 "(recursive aliases are not allowed)", event.start_mark)
            self._spend(size, event.start_mark)
            return node
        event = self.peek_event()
        if self._depth >= MAX_YAML_DEPTH:
            raise _YAMLLimit(f"nesting deeper than {MAX_YAML_DEPTH} levels", event.start_mark)
        before = self._nodes
        self._spend(1, event.start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def compose_document(self) -> Any:
        node = super().compose_document()
        self._sizes = {}
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark)
                except TypeError:
                    continue  # unhashable: SafeConstructor reports it
                if first is not key_node.start_mark:
                    raise _YAMLLimit(
                        f"duplicate key {_short(key)} (first given at {_line(first)}); each key may appear once "
                        "in a mapping",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str, where: str) -> Any:
    """Parse untrusted YAML text with the limits above; every failure is a ConfigError naming ``where``."""
    if not isinstance(text, str):
        raise ConfigError(f"{where}: expected YAML text, got {type(text).__name__}")
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(
            f"{where}: the text is {len(text)} characters long; pipeline files may have at most {MAX_YAML_BYTES}"
        )
    loader = None
    try:
        loader = _LimitedLoader(text)  # the reader already refuses characters YAML does not allow
        return loader.get_single_data()
    except _YAMLLimit as e:
        raise ConfigError(f"{where}: {_line(e.mark)}: {e.message}") from None
    except RecursionError:
        raise ConfigError(f"{where}: the document is nested too deeply (limit {MAX_YAML_DEPTH} levels)") from None
    except yaml.constructor.ConstructorError as e:
        problem = _cut(str(e.problem or ""), 300)
        if "constructor for the tag" in problem:
            raise ConfigError(
                f"{where}: {_line(e.problem_mark)}: tag not allowed ({problem}); pipeline files are plain YAML and "
                "cannot name Python objects"
            ) from None
        raise ConfigError(f"{where}: {_line(e.problem_mark)}: invalid YAML value: {problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: YAML syntax error: {_cut(str(e), 600)}") from None
    finally:
        if loader is not None:
            loader.dispose()


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


def _read_limited(p: Path) -> str:
    """The UTF-8 text of a pipeline file, refusing files over MAX_YAML_BYTES before reading them."""
    name = _short(str(p))
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"pipeline file {name} is a directory; give a .yaml file")
        if st.st_size > MAX_YAML_BYTES:
            raise ConfigError(
                f"pipeline file {name} is {st.st_size} bytes; pipeline files may be at most {MAX_YAML_BYTES} bytes"
            )
        with open(p, "rb") as f:  # bounded read: the size can change, and devices report 0
            data = f.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"pipeline file {name} does not exist") from None
    except OSError as e:
        raise ConfigError(f"pipeline file {name} cannot be read: {e.strerror or e}") from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"pipeline file {name} is over {MAX_YAML_BYTES} bytes; pipeline files may be at most that")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"pipeline file {name} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); save it as UTF-8"
        ) from None
    return text.replace("\r\n", "\n")


def load_config(path: Union[str, Path], *, check_plugins: bool = True) -> PipelineConfig:
    """Read and validate a YAML pipeline file."""
    try:
        p = Path(path).expanduser()
    except (TypeError, RuntimeError) as e:
        raise ConfigError(f"pipeline file {_short(path)}: not a usable path ({e})") from None
    text = _read_limited(p)
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
