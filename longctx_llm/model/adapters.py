"""Trained adapter files: sharded safetensors plus a JSON card, checked against the base model before use.

Layout of an adapter directory (what ``longctx train`` writes and the CCM/RCC plugins ship)::

    adapter.json                 the card: kind, base model (name, file hash, shapes), options, training, figures
    weights-00001.safetensors    tensors, each file at most 16 MB (so they fit package and git limits)
    weights-00002.safetensors    ...

The card lists every weight file with its SHA-256, so a truncated or flipped file is refused with a clear
:class:`~longctx_llm.errors.AdapterError` instead of loading silently corrupted weights. :func:`check_base` compares
the card's base model with a loaded model (model type, hidden size, layer count, vocabulary, file hash) before any
session is touched.

Files are untrusted: every floating tensor must hold finite values (:func:`load_adapter`), and a card's ``config``
numbers are checked against the tensors actually present (:func:`config_int`, :func:`lora_rank`) before an adapter
allocates anything from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import AdapterError

CARD = "adapter.json"
FORMAT = "longctx-adapter"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 16 * 1000 * 1000


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def model_facts(model) -> dict[str, Any]:
    """Shapes an adapter depends on, read from a transformers model's config."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return {
        "model_type": cfg.model_type,
        "hidden_size": int(cfg.hidden_size),
        "num_layers": int(cfg.num_hidden_layers),
        "vocab_size": int(cfg.vocab_size),
    }


def _split(name: str, t: torch.Tensor, max_bytes: int) -> list[tuple[str, torch.Tensor]]:
    """A tensor over the file limit becomes row blocks ``name@0``, ``name@1``... (joined again on load)."""
    n = t.numel() * t.element_size()
    if n <= max_bytes:
        return [(name, t)]
    if t.dim() == 0 or t.shape[0] < 2:
        raise AdapterError(f"tensor {name!r} has {n} bytes in one row, over the {max_bytes}-byte file limit")
    row = n // t.shape[0]
    if row > max_bytes:
        raise AdapterError(f"tensor {name!r} has rows of {row} bytes, over the {max_bytes}-byte file limit")
    per = max(1, max_bytes // max(1, row))
    return [(f"{name}@{i}", t[s : s + per].contiguous()) for i, s in enumerate(range(0, t.shape[0], per))]


def _shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> tuple[list[dict[str, torch.Tensor]], dict[str, int]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    joined: dict[str, int] = {}
    size = 0
    for name in sorted(tensors):
        parts = _split(name, tensors[name].detach().contiguous().cpu(), max_bytes)
        if len(parts) > 1:
            joined[name] = len(parts)
        for pname, t in parts:
            n = t.numel() * t.element_size()
            if size + n > max_bytes and shards[-1]:
                shards.append({})
                size = 0
            shards[-1][pname] = t
            size += n
    return shards, joined


def save_adapter(
    directory: str | os.PathLike, tensors: dict[str, torch.Tensor], card: dict[str, Any], *, max_bytes: int = MAX_FILE_BYTES
) -> Path:
    """Write ``tensors`` and ``card`` to ``directory`` (replaced atomically; shards of at most ``max_bytes``)."""
    from safetensors.torch import save_file

    target = Path(directory).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        files = []
        shards, joined = _shards(tensors, max_bytes)
        for i, shard in enumerate(shards, start=1):
            name = f"weights-{i:05d}.safetensors"
            save_file(shard, str(tmp / name), metadata={"format": "pt"})
            files.append({"name": name, "sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size})
        doc = {"format": FORMAT, "format_version": FORMAT_VERSION, **card, "files": files}
        if joined:
            doc["joined"] = joined  # tensors stored as row blocks name@0, name@1, ...
        (tmp / CARD).write_text(json.dumps(doc, indent=1) + "\n")
        if target.exists():
            if not is_adapter_dir(target):
                raise AdapterError(f"{str(target)!r} exists and is not an adapter directory; not overwriting it")
            keep = target / "checkpoint"  # a trainer's resumable checkpoint lives inside its output adapter
            if keep.is_dir() and not (tmp / "checkpoint").exists():
                os.replace(keep, tmp / "checkpoint")
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def is_adapter_dir(target: Path) -> bool:
    """Whether ``save_adapter`` may replace the existing ``target``: an adapter directory (its card present), or a
    folder holding nothing but a trainer's ``checkpoint`` (an empty one included)."""
    try:
        return target.is_dir() and ((target / CARD).is_file() or {p.name for p in target.iterdir()} <= {"checkpoint"})
    except OSError:
        return False


def read_card(directory: str | os.PathLike) -> dict[str, Any]:
    d = Path(directory).expanduser()
    path = d / CARD
    if not d.is_dir():
        raise AdapterError(f"adapter directory {str(d)!r} does not exist")
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise AdapterError(f"{str(d)!r} is not an adapter directory (no {CARD})") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AdapterError(f"{str(path)!r} is unreadable: {e}") from e
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise AdapterError(f"{str(path)!r} is not a longctx adapter card (format {FORMAT!r} expected)")
    if card.get("format_version") != FORMAT_VERSION:
        raise AdapterError(
            f"{str(path)!r}: adapter format version {card.get('format_version')!r} is not supported "
            f"(supported: {FORMAT_VERSION})"
        )
    files = card.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) and "name" in f for f in files):
        raise AdapterError(f"{str(path)!r}: the card lists no weight files")
    return card


def load_adapter(directory: str | os.PathLike, *, kind: Optional[str] = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an adapter's tensors and card, checking each file's hash (and the card's kind, if given)."""
    from safetensors.torch import load_file

    d = Path(directory).expanduser()
    card = read_card(d)
    if kind is not None and card.get("kind") != kind:
        raise AdapterError(f"{str(d)!r} holds a {card.get('kind')!r} adapter, not a {kind!r} one")
    tensors: dict[str, torch.Tensor] = {}
    for f in card["files"]:
        name = str(f["name"])
        if Path(name).name != name:
            raise AdapterError(f"{str(d / CARD)!r}: weight file name {name!r} is not a plain file name")
        path = d / name
        if not path.is_file():
            raise AdapterError(f"adapter file {str(path)!r} is missing")
        if f.get("sha256") and sha256_file(path) != f["sha256"]:
            raise AdapterError(f"adapter file {str(path)!r} is corrupted (its SHA-256 does not match the card)")
        try:
            part = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            raise AdapterError(f"adapter file {str(path)!r} is unreadable: {e}") from e
        dup = set(part) & set(tensors)
        if dup:
            raise AdapterError(f"adapter files repeat tensors {sorted(dup)[:3]}")
        tensors.update(part)
    for name, count in (card.get("joined") or {}).items():
        try:
            blocks = [tensors.pop(f"{name}@{i}") for i in range(int(count))]
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterError(f"adapter {str(d)!r}: tensor {name!r} is missing row blocks ({e})") from e
        tensors[name] = torch.cat(blocks, dim=0)
    check_finite(tensors, repr(str(d)))
    return tensors, card


def check_finite(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Refuse NaN or infinite weights (a card without checksums would load them silently; the model then answers
    nonsense). One pass over adapter-sized tensors."""
    for name in sorted(tensors):
        t = tensors[name]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise AdapterError(
                f"adapter {where}: tensor {name!r} holds {bad} NaN or infinite value(s) of {t.numel()}; the weights "
                "are corrupted (reinstall the package that ships it, or train it again)"
            )


def lora_rank(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    """The rank of the LoRA tensors ``{prefix}...lora_A`` (r, in) present in an adapter's files; 0 when none."""
    for name in sorted(tensors):
        if name.startswith(prefix) and name.endswith(".lora_A") and tensors[name].dim() == 2:
            return int(tensors[name].shape[0])
    return 0


def config_int(config: dict[str, Any], key: str, where: str, present: int, held: str, *, minimum: int = 1,
               default: Any = None) -> int:
    """``config[key]`` (``default`` when absent) as the integer the weight files fix (``present``; ``held`` says what
    they hold), checked before anything is allocated from it: a card saying rank -1 or 10^9 COMP tokens is an
    AdapterError, never a negative-dimension or allocator error."""
    value = config.get(key, default)
    if value is None:
        raise AdapterError(f"adapter card {where}: config.{key} is missing ({held})")
    if type(value) is not int or value < minimum or value != present:
        text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        valid = f" (valid: {present})" if present >= minimum else ""
        raise AdapterError(f"adapter card {where}: config.{key} is {text}, but {held}{valid}")
    return value


def check_base(card: dict[str, Any], model, fingerprint: Optional[str], where: str) -> None:
    """Refuse an adapter made for another model: shapes first (clear message), then the base file hash."""
    base = card.get("base_model") or {}
    have = model_facts(model)
    for key, value in have.items():
        want = base.get(key)
        if want is not None and want != value:
            raise AdapterError(
                f"adapter {where} was trained for a model with {key} {want!r}; this model has {key} {value!r} "
                f"({base.get('name', 'unknown base')}); train one for this model with `longctx train`"
            )
    want_hash = base.get("sha256")
    if want_hash and fingerprint and want_hash != fingerprint:
        raise AdapterError(
            f"adapter {where} was trained on base model {base.get('name', '?')} with file hash {want_hash[:16]}…; "
            f"this model's hash is {fingerprint[:16]}… (same shapes, other weights); train one for this model"
        )


def check_keys(tensors: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], where: str) -> None:
    """Strict loading: the same key set and shapes, or a clear error naming what is missing or extra."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s), e.g. {extra[:3]}")
        raise AdapterError(f"adapter {where} does not match this model's layout: {'; '.join(parts)}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != tuple(shape):
            raise AdapterError(
                f"adapter {where}: tensor {k!r} has shape {tuple(tensors[k].shape)}, this model needs {tuple(shape)}"
            )


def shipped(package: str, folder: str) -> list[Path]:
    """Adapter directories shipped as package data under ``package/folder`` (one per supported embedded model)."""
    import importlib.resources

    root = importlib.resources.files(package) / folder
    out = []
    try:
        for entry in root.iterdir():
            if entry.is_dir() and (entry / CARD).is_file():
                out.append(Path(str(entry)))
    except (FileNotFoundError, NotADirectoryError):
        pass
    return sorted(out)


def find_shipped(package: str, folder: str, fingerprint: Optional[str]) -> Optional[Path]:
    """The shipped adapter whose base model has the file hash ``fingerprint``, if any."""
    if fingerprint is None:
        return None
    for d in shipped(package, folder):
        try:
            card = read_card(d)
        except AdapterError:
            continue
        if (card.get("base_model") or {}).get("sha256") == fingerprint:
            return d
    return None
