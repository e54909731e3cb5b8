"""Sessions: one id owns its model-side state (strategy cache + memory) and its history.

Sessions are isolated (each has its own state objects) and serialised (a lock: one request at a time).

A saved session is a directory::

    NAME/session.json                      the document: header, history, token ids, metas, and for each tensor
                                           file its name, size and SHA-256 (written last, by one os.replace)
    NAME/strategy-<version>.safetensors    the strategy state's tensors
    NAME/memory-<version>.safetensors      the memory state's tensors

Saving never destroys what it did not write: a path that exists and is not a session saved here is refused, and a
saved session is replaced only with ``overwrite=True``. Saving is crash-atomic: a new path is written as a hidden
sibling ``.NAME.tmp-*`` and renamed into place; an existing save gets its new tensor files under new names and then
its ``session.json`` is swapped by ``os.replace``, so after a kill at any moment the path holds the old or the new
session, never neither. Leftovers of interrupted saves are removed by the next save to that path.

Saved files are untrusted on reading: the document is checked against a schema, the tensor files against their
recorded sizes and checksums, and every problem is one :class:`SessionError` naming the path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ..errors import SessionError
from .memory import SLOT, MemoryState, Message
from .strategy import StrategyState
from .templates import ROLE_ALIASES, ROLES

#: the version written; versions read are READ_VERSIONS (1: fixed tensor file names, no checksums)
FORMAT_VERSION = 2
READ_VERSIONS = (1, 2)
#: the marker in every session.json written here (a save only ever replaces a directory carrying it)
FORMAT_MARKER = "longctx-llm-session"
DOC_NAME = "session.json"
PARTS = ("strategy", "memory")
#: seconds a save waits for the session (held by a running request or an unread stream) and for the folder's lock
SAVE_WAIT_S = 300.0
#: token ids are non-negative (SLOT marks a memory slot in cached_ids) and below this bound
_MAX_TOKEN = 2**31
_QUOTE = 200
_TENSOR_FILE = re.compile(r"^(strategy|memory)(-[0-9a-f]{8,64})?\.safetensors$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_STAGING = ".staging-"


class Session:
    def __init__(self, session_id: str, state: StrategyState, memory: MemoryState):
        self.id = session_id
        self.state = state
        self.memory = memory
        self.history: list[Message] = []
        #: exactly what the strategy state's cache holds (row 0): token ids, and memory.SLOT for memory slots
        self.cached_ids: list[int] = []
        #: the conversation's token ids as last rendered (a compressing memory's slots stand for a prefix of them)
        self.token_ids: list[int] = []
        #: the finished conversation's token ids, set before ``on_turn_end`` for memories that ask for them
        self.turn_ids: list[int] = []
        self.turns = 0
        # a plain Lock, not an RLock: a stream opened in one thread may be finished (and release it) in another
        self.lock = threading.Lock()

    def common_prefix(self, ids: list[int]) -> int:
        n = 0
        for a, b in zip(self.cached_ids, ids):
            if a != b:
                break
            n += 1
        return n

    def __repr__(self) -> str:
        return f"Session({self.id!r}, turns={self.turns}, cached_tokens={len(self.cached_ids)})"


# ---- helpers -----------------------------------------------------------------------------------------------------
def _short(value: Any, limit: int = _QUOTE) -> str:
    """``repr(value)`` cut to ``limit`` characters (messages never quote unbounded input)."""
    try:
        text = repr(value)
    except Exception:  # a recursive or hostile object
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _where(path: Path) -> str:
    return _short(str(path), 2 * _QUOTE)


def _path(directory: Any, action: str) -> Path:
    """``directory`` as a Path with ``~`` expanded (never a literal ``~`` folder)."""
    if not isinstance(directory, (str, os.PathLike)):
        raise SessionError(f"cannot {action} a session: expected a directory path, got {type(directory).__name__}")
    try:
        path = Path(directory).expanduser()
    except (RuntimeError, KeyError, OSError, TypeError, ValueError) as e:  # "~user" with no such user
        raise SessionError(f"cannot {action} a session at {_short(os.fspath(directory))}: {e}") from None
    if not str(path) or str(path) == ".":
        raise SessionError(f"cannot {action} a session: give a directory path, got {_short(os.fspath(directory))}")
    if path.parts[:1] and path.parts[0].startswith("~"):  # never create a folder literally named "~..."
        raise SessionError(
            f"cannot {action} a session at {_short(str(path))}: '~' could not be expanded to a home directory"
        )
    return path


def _oserror(e: OSError) -> str:
    what = e.strerror or str(e) or type(e).__name__
    return f"{what}" + (f" ({_short(e.filename)})" if e.filename else "")


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def _dtype_name(dtype: Any) -> str:
    """``torch.float16`` / ``"float16"`` -> ``"float16"``."""
    return str(dtype).removeprefix("torch.")


def _float_dtype(tensors: dict) -> Optional[str]:
    """The floating-point dtype of a state's tensors (None without floating tensors; names joined if mixed)."""
    names = sorted({_dtype_name(t.dtype) for t in tensors.values() if t.is_floating_point()})
    return ",".join(names) if names else None


@contextlib.contextmanager
def _hold(lock: threading.Lock, what: str, timeout: float) -> Iterator[None]:
    if not lock.acquire(timeout=timeout):
        raise SessionError(
            f"{what} stayed busy for {timeout:.0f} s (a request or an unread stream holds it); finish or close it "
            "and save again"
        )
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def _folder_lock(folder: Path, timeout: float) -> Iterator[bool]:
    """An advisory lock on ``folder`` (the target's parent) among savers, so no save removes another's files.

    Yields whether the lock is held: where directories cannot be locked (no ``fcntl``, or a file system that
    refuses) saving goes on unlocked.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield False
        return
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + timeout
        locked = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SessionError(
                        f"another save into {_where(folder)} held its lock for {timeout:.0f} s; try again"
                    ) from None
                time.sleep(0.01)
            except OSError:  # the file system does not lock directories
                break
        yield locked
    finally:
        os.close(fd)  # releases the lock


def _read_doc_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _parse_json(raw: bytes, where: str) -> Any:
    """Strict JSON (UTF-8, no NaN/Infinity); any failure is a SessionError naming ``where``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SessionError(f"{where} is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start})") from None

    def _no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a valid number in a session file")

    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise SessionError(f"{where} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise SessionError(f"{where} is not a session document: it is nested too deeply") from None
    except ValueError as e:
        raise SessionError(f"{where} is not valid JSON: {_short(str(e))}") from None


def _is_ours(doc: Any) -> bool:
    """Whether a parsed session.json was written by this package (any version, for overwriting)."""
    if not isinstance(doc, dict):
        return False
    if doc.get("format") == FORMAT_MARKER:
        return True
    # version 1 had no marker: recognise its fixed set of keys
    return doc.get("format_version") == 1 and {"id", "turns", "history", "cached_ids", "strategy_meta"} <= set(doc)


def _existing_kind(target: Path) -> tuple[str, Optional[dict]]:
    """("missing" | "ours" | "foreign", the parsed document if ours)."""
    if not os.path.lexists(target):
        return "missing", None
    if target.is_symlink() and not target.exists():
        return "foreign", None
    if not target.is_dir():
        return "foreign", None
    try:
        doc = _parse_json(_read_doc_bytes(target / DOC_NAME), _where(target / DOC_NAME))
    except (OSError, SessionError):
        return "foreign", None
    return ("ours", doc) if _is_ours(doc) else ("foreign", None)


def _remove(path: Path) -> None:
    """Delete a file or folder we wrote (best effort)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except OSError:
        pass


def _sibling_leftovers(target: Path, kind: str) -> list[Path]:
    """``.NAME.tmp-*`` and ``.NAME.old-*`` beside ``target`` left by interrupted saves."""
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    tmp, old = f".{target.name}.tmp-", f".{target.name}.old-"
    return [target.parent / n for n in names if n.startswith(tmp if kind == "tmp" else old)]


def _recover_old(target: Path) -> None:
    """A save by an earlier version could be killed between moving the old save aside (``.NAME.old-PID``) and
    renaming the new one in: put the old one back so that nothing is lost."""
    if os.path.lexists(target):
        return
    candidates = []
    for p in _sibling_leftovers(target, "old"):
        kind, _ = _existing_kind(p)
        if kind == "ours":
            with contextlib.suppress(OSError):
                candidates.append((p.stat().st_mtime, p))
    if candidates:
        os.rename(max(candidates)[1], target)


def _clean_inside(target: Path, keep: set[str]) -> None:
    """Remove tensor files and temporary documents in ``target`` that the current session.json does not name."""
    try:
        names = os.listdir(target)
    except OSError:
        return
    for n in names:
        if n in keep:
            continue
        if _TENSOR_FILE.match(n) or n.startswith((f".{DOC_NAME}.tmp-", _STAGING)):
            _remove(target / n)


def _write_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def _write_part(folder: Path, part: str, version: str, tensors: dict) -> dict[str, Any]:
    """Write one tensor file under a fresh name; its entry for the document (name, size, sha256).

    The file is written in a staging folder (``.staging-<version>``: the writer may leave temporary files of its own
    there when killed) and renamed into ``folder`` once complete.
    """
    name = f"{part}-{version}.safetensors"
    staging = folder / f"{_STAGING}{version}"
    staging.mkdir(exist_ok=True)
    path = staging / name
    _write_tensors(path, tensors)
    with open(path, "rb") as f:
        os.fsync(f.fileno())
    digest, size = _sha256(path)
    os.rename(path, folder / name)
    return {"name": name, "size": size, "sha256": digest}


def _write_doc(path: Path, doc: dict[str, Any]) -> None:
    data = json.dumps(doc, indent=1, allow_nan=False).encode("ascii")
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ---- saving ------------------------------------------------------------------------------------------------------
def save_session(
    session: Session,
    directory: str | os.PathLike,
    header: dict[str, Any],
    *,
    overwrite: bool = False,
    wait_s: float = SAVE_WAIT_S,
) -> Path:
    """Write ``session`` to the folder ``directory``, crash-atomically.

    ``directory`` must not exist, or hold a session saved here; that one is replaced only with ``overwrite=True``.
    Anything else there is left untouched and SessionError raised. Returns the path written.
    """
    target = _path(directory, "save")
    where = _where(target)
    with _hold(session.lock, f"session {_short(session.id)}", wait_s):
        s_tensors, s_meta = session.state.state_dict()
        m_tensors, m_meta = session.memory.state_dict()
        version = f"{time.time_ns():x}{secrets.token_hex(4)}"
        doc: dict[str, Any] = {
            "format": FORMAT_MARKER,
            "format_version": FORMAT_VERSION,
            **header,
            "id": session.id,
            "turns": session.turns,
            "history": session.history,
            "cached_ids": session.cached_ids,
            "token_ids": session.token_ids,
            "strategy_meta": s_meta,
            "memory_meta": m_meta,
            "dtype": _float_dtype({**s_tensors, **{f"m.{k}": v for k, v in m_tensors.items()}}),
        }
        try:
            json.dumps(doc, allow_nan=False)  # fail before writing anything
        except (TypeError, ValueError, RecursionError) as e:
            raise SessionError(f"could not save session {_short(session.id)}: its state is not JSON: {e}") from None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SessionError(
                f"could not save session {_short(session.id)} to {where}: cannot create its parent folder: "
                f"{_oserror(e)}"
            ) from None
        with _folder_lock(target.parent, wait_s):
            try:
                _recover_old(target)
                kind, old = _existing_kind(target)
                if kind == "foreign":
                    raise SessionError(
                        f"could not save session {_short(session.id)} to {where}: the path exists and is not a "
                        f"session saved by longctx-llm (no {DOC_NAME} with format {FORMAT_MARKER!r}); it is left "
                        "untouched: give a path that does not exist yet"
                    )
                if kind == "ours" and not overwrite:
                    raise SessionError(
                        f"could not save session {_short(session.id)} to {where}: it already holds a saved session "
                        f"(id {_short(old.get('id'))}); pass overwrite=True to replace it, or give another path"
                    )
                for p in _sibling_leftovers(target, "tmp"):
                    _remove(p)
                if kind == "missing":
                    _save_new(target, doc, version, s_tensors, m_tensors)
                else:
                    _save_over(target, doc, version, s_tensors, m_tensors)
                    for p in _sibling_leftovers(target, "old"):
                        _remove(p)
            except SessionError:
                raise
            except OSError as e:
                raise SessionError(
                    f"could not save session {_short(session.id)} to {where}: {_oserror(e)}"
                ) from None
            except Exception as e:  # safetensors and torch raise their own types
                raise SessionError(
                    f"could not save session {_short(session.id)} to {where}: {type(e).__name__}: {_short(str(e))}"
                ) from None
    return target


def _save_new(target: Path, doc: dict, version: str, s_tensors: dict, m_tensors: dict) -> None:
    """A path that does not exist: write a hidden sibling folder, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        doc["files"] = {
            "strategy": _write_part(tmp, "strategy", version, s_tensors),
            "memory": _write_part(tmp, "memory", version, m_tensors),
        }
        _write_doc(tmp / DOC_NAME, doc)
        _remove(tmp / f"{_STAGING}{version}")
        _fsync_dir(tmp)
        if os.path.lexists(target):  # appeared meanwhile: never rename over it
            raise SessionError(f"could not save to {_where(target)}: the path appeared while saving; left untouched")
        os.rename(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(target.parent)


def _save_over(target: Path, doc: dict, version: str, s_tensors: dict, m_tensors: dict) -> None:
    """Replace a saved session in place: new tensor files under new names, then swap session.json (one rename)."""
    _clean_inside(target, _referenced(target))
    written: list[Path] = []
    tmp_doc = target / f".{DOC_NAME}.tmp-{version}"
    staging = target / f"{_STAGING}{version}"
    try:
        files = {}
        for part, tensors in (("strategy", s_tensors), ("memory", m_tensors)):
            written.append(target / f"{part}-{version}.safetensors")
            files[part] = _write_part(target, part, version, tensors)
        doc["files"] = files
        written.append(tmp_doc)
        _write_doc(tmp_doc, doc)
        os.replace(tmp_doc, target / DOC_NAME)
    except BaseException:
        for p in [*written, staging]:
            _remove(p)
        raise
    _remove(staging)
    _fsync_dir(target)
    _clean_inside(target, {DOC_NAME, *(f["name"] for f in doc["files"].values())})


def _referenced(target: Path) -> set[str]:
    """The names the current session.json uses (kept by a cleanup before the new version is written)."""
    keep = {DOC_NAME}
    try:
        doc = _parse_json(_read_doc_bytes(target / DOC_NAME), _where(target))
    except (OSError, SessionError):
        return keep
    if isinstance(doc, dict) and isinstance(doc.get("files"), dict):
        for entry in doc["files"].values():
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                keep.add(entry["name"])
    else:
        keep |= {f"{part}.safetensors" for part in PARTS}
    return keep


# ---- reading -----------------------------------------------------------------------------------------------------
def _fail(where: str, field: str, problem: str) -> SessionError:
    return SessionError(f"{where} is not a valid saved session: {field}: {problem}")


def _check_type(where: str, field: str, value: Any, types: Any, expected: str) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise _fail(where, field, f"expected {expected}, got {type(value).__name__} {_short(value, 80)}")


def _as_tuple(types: Any) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _check_ids(where: str, field: str, value: Any, low: int) -> None:
    _check_type(where, field, value, list, "a list of token ids")
    for i, t in enumerate(value):
        if type(t) is not int or not low <= t < _MAX_TOKEN:
            raise _fail(where, f"{field}[{i}]", f"expected a token id (an integer from {low} to {_MAX_TOKEN - 1}), "
                        f"got {_short(t, 80)}")


def _check_text(where: str, field: str, value: Any) -> None:
    _check_type(where, field, value, str, "a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _fail(where, field, f"not valid Unicode text (a lone surrogate at position {e.start})") from None


def validate_document(doc: Any, where: str = "session.json") -> dict[str, Any]:
    """Check a parsed session.json against the schema; returns it, or raises SessionError naming the field."""
    if not isinstance(doc, dict):
        raise SessionError(f"{where} is not a saved session: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("format_version")
    if type(version) is not int or version not in READ_VERSIONS:
        raise SessionError(
            f"{where}: session format version {_short(version, 40)} is not supported (supported: "
            f"{', '.join(map(str, READ_VERSIONS))}); save the session again with this version of longctx-llm"
        )
    if version >= 2 and doc.get("format") != FORMAT_MARKER:
        raise _fail(where, "format", f"expected {FORMAT_MARKER!r}, got {_short(doc.get('format'), 80)}")
    required = {
        "model": (str, "a string (the model source)"),
        "strategy": (dict, "an object (the strategy's description)"),
        "memory": (dict, "an object (the memory's description)"),
        "id": (str, "a string (the session id)"),
        "turns": (int, "a non-negative integer"),
        "history": (list, "a list of messages"),
        "cached_ids": (list, "a list of token ids"),
        "strategy_meta": (dict, "an object"),
        "memory_meta": (dict, "an object"),
    }
    if version >= 2:
        required["files"] = (dict, "an object naming the tensor files")
    for field, (types, expected) in required.items():
        if field not in doc:
            raise _fail(where, field, "missing")
        _check_type(where, field, doc[field], types, expected)
    if not doc["id"]:
        raise _fail(where, "id", "expected a non-empty string")
    if doc["turns"] < 0:
        raise _fail(where, "turns", f"expected a non-negative integer, got {doc['turns']}")
    for i, m in enumerate(doc["history"]):
        field = f"history[{i}]"
        _check_type(where, field, m, dict, "a message object with role and content")
        role = m.get("role")
        if not isinstance(role, str) or (role not in ROLES and role not in ROLE_ALIASES):
            raise _fail(where, f"{field}.role", f"{_short(role, 80)} is not a valid role (valid: "
                        f"{', '.join([*ROLES, *ROLE_ALIASES])})")
        if "content" not in m:
            raise _fail(where, f"{field}.content", "missing")
        _check_text(where, f"{field}.content", m["content"])
    _check_ids(where, "cached_ids", doc["cached_ids"], SLOT)
    if "token_ids" in doc:  # absent in early saves
        _check_ids(where, "token_ids", doc["token_ids"], 0)
    if doc.get("dtype") is not None:
        _check_type(where, "dtype", doc["dtype"], str, "a dtype name or null")
    if version >= 2:
        files = doc["files"]
        for part in PARTS:
            entry = files.get(part)
            field = f"files.{part}"
            _check_type(where, field, entry, dict, "an object with name, size and sha256")
            name = entry.get("name")
            if not isinstance(name, str) or not _TENSOR_FILE.match(name) or not name.startswith(part):
                raise _fail(where, f"{field}.name", f"expected a file name like '{part}-<hex>.safetensors' in the "
                            f"session folder, got {_short(name, 80)}")
            if type(entry.get("size")) is not int or entry["size"] < 0:
                raise _fail(where, f"{field}.size", f"expected a non-negative integer, got {_short(entry.get('size'))}")
            if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
                raise _fail(where, f"{field}.sha256", f"expected 64 hex digits, got {_short(entry.get('sha256'), 80)}")
    return doc


def _load_part(d: Path, doc: dict, part: str) -> dict:
    from safetensors.torch import load_file

    if doc["format_version"] >= 2:
        entry = doc["files"][part]
        path = d / entry["name"]
        where = _where(path)
        try:
            digest, size = _sha256(path)
        except FileNotFoundError:
            raise SessionError(f"saved session {_where(d)} is incomplete: {where} is missing") from None
        except OSError as e:
            raise SessionError(f"saved session tensors {where} cannot be read: {_oserror(e)}") from None
        if size != entry["size"] or digest != entry["sha256"]:
            raise SessionError(
                f"saved session tensors {where} are corrupted: {size} bytes with SHA-256 {digest[:16]}..., the "
                f"session recorded {entry['size']} bytes with {entry['sha256'][:16]}...; restore it from a copy"
            )
    else:
        path = d / f"{part}.safetensors"
        where = _where(path)
        if not path.is_file():
            raise SessionError(f"saved session {_where(d)} is incomplete: {where} is missing")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        problem = f"{type(e).__name__}: {_short(str(e))}"
        raise SessionError(f"saved session tensors {where} are unreadable: {problem}") from None
    dtype = doc.get("dtype")
    if dtype is not None:
        allowed = dtype.split(",")
        for k, t in tensors.items():
            if t.is_floating_point() and _dtype_name(t.dtype) not in allowed:
                raise SessionError(
                    f"saved session tensors {where}: {_short(k, 80)} is {_dtype_name(t.dtype)}, the session "
                    f"recorded {dtype}"
                )
    for k in sorted(tensors):  # a cache holding NaN makes every later reply empty or garbage
        t = tensors[k]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise SessionError(
                f"saved session tensors {where}: {_short(k, 80)} holds NaN or infinite values; the saved state is "
                "corrupted (start the session again)"
            )
    return tensors


def read_session(directory: str | os.PathLike) -> tuple[dict[str, Any], dict, dict]:
    """Read a saved session: (header document, strategy tensors, memory tensors); any problem is a SessionError."""
    d = _path(directory, "read")
    doc_path = d / DOC_NAME
    where = _where(doc_path)
    try:
        raw = _read_doc_bytes(doc_path)
    except (FileNotFoundError, NotADirectoryError):
        raise SessionError(f"{_where(d)} is not a saved session (no {DOC_NAME})") from None
    except OSError as e:
        raise SessionError(f"{where} is unreadable: {_oserror(e)}") from None
    try:
        doc = validate_document(_parse_json(raw, where), where)
        _clean_after_read(d, doc)
        return doc, _load_part(d, doc, "strategy"), _load_part(d, doc, "memory")
    except SessionError:
        raise
    except RecursionError:
        raise SessionError(f"{where} is not a valid saved session: it is nested too deeply") from None
    except Exception as e:  # a last guard: nothing a file holds escapes as a raw traceback
        raise SessionError(f"saved session {_where(d)} is unreadable: {type(e).__name__}: {_short(str(e))}") from None


def _clean_after_read(d: Path, doc: dict[str, Any]) -> None:
    """Remove what interrupted saves left inside a session folder (``.staging-*`` folders, tensor files and temporary
    documents that the valid session.json does not name), unless a save into the folder runs now (its lock is held:
    that save cleans up after itself). Best effort: a read-only folder is read all the same."""
    keep = {DOC_NAME}
    if doc["format_version"] >= 2:
        keep |= {entry["name"] for entry in doc["files"].values()}
    else:
        keep |= {f"{part}.safetensors" for part in PARTS}
    try:
        with _folder_lock(d.parent, 0.0) as locked:
            if locked:  # unlocked, a save of another process could be writing there
                _clean_inside(d, keep)
    except SessionError:  # another process is saving here
        pass


def check_restored(session: Session, where: str) -> None:
    """A restored session's strategy state has fed exactly the tokens its record says the cache holds."""
    seen, held = session.state.seen, len(session.cached_ids)
    if seen != held:
        raise SessionError(
            f"saved session {where}: its strategy state has seen {_short(seen, 40)} tokens, but its cached_ids hold "
            f"{held} (valid: {held})"
        )


def check_compatible(doc: dict[str, Any], header: dict[str, Any], where: Optional[str] = None) -> None:
    """Refuse a saved session made with another model, strategy or memory (or dtype, when ``header`` has one)."""
    for key in ("model", "strategy", "memory"):
        if doc.get(key) != header.get(key):
            raise SessionError(
                f"saved session {where or ''} was made with {key} {_short(doc.get(key))}, this engine has "
                f"{_short(header.get(key))}"
            )
    if header.get("dtype") is not None:
        check_dtype(doc, header["dtype"], where)


def check_dtype(doc: dict[str, Any], dtype: Any, where: Optional[str] = None) -> None:
    """Refuse a saved session whose tensors have another floating dtype than the engine's model (``dtype``: a
    ``torch.dtype`` or its name). Saves without floating tensors, or from version 1, pass; a save with several
    floating dtypes passes when the model's is one of them."""
    saved = doc.get("dtype")
    if not isinstance(saved, str) or dtype is None:
        return
    want = _dtype_name(dtype)
    if want not in saved.split(","):
        raise SessionError(
            f"saved session {where or ''} holds {saved} tensors, this engine's model runs in {want}; load the model "
            f"with dtype={saved.split(',')[0]!r} to restore it (or start the session again)"
        )
