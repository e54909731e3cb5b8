"""Sessions: one id owns its model-side state (strategy cache + memory) and its history.

Sessions are isolated (each has its own state objects) and serialised (a lock: one request at a time).
State saves to a directory (``session.json`` + ``strategy.safetensors`` + ``memory.safetensors``), written to a
temporary directory first and renamed into place, with a format version checked on restore.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Optional

from .errors import SessionError
from .memory import MemoryState, Message
from .strategy import StrategyState

FORMAT_VERSION = 1


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


def _write_tensors(path: Path, tensors: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def save_session(session: Session, directory: str | os.PathLike, header: dict[str, Any]) -> Path:
    """Write ``session`` to ``directory`` atomically (replaces an existing save)."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    with session.lock:
        s_tensors, s_meta = session.state.state_dict()
        m_tensors, m_meta = session.memory.state_dict()
        doc = {
            "format_version": FORMAT_VERSION,
            **header,
            "id": session.id,
            "turns": session.turns,
            "history": session.history,
            "cached_ids": session.cached_ids,
            "token_ids": session.token_ids,
            "strategy_meta": s_meta,
            "memory_meta": m_meta,
        }
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            _write_tensors(tmp / "strategy.safetensors", s_tensors)
            _write_tensors(tmp / "memory.safetensors", m_tensors)
            (tmp / "session.json").write_text(json.dumps(doc, indent=1))
            if target.exists():
                old = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except (OSError, TypeError, ValueError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise SessionError(f"could not save session {session.id!r} to {str(target)!r}: {e}") from e
    return target


def read_session(directory: str | os.PathLike) -> tuple[dict[str, Any], dict, dict]:
    """Read a saved session: (header document, strategy tensors, memory tensors)."""
    from safetensors.torch import load_file

    d = Path(directory)
    try:
        doc = json.loads((d / "session.json").read_text())
    except FileNotFoundError as e:
        raise SessionError(f"{str(d)!r} is not a saved session (no session.json)") from e
    except (OSError, json.JSONDecodeError) as e:
        raise SessionError(f"{str(d / 'session.json')!r} is unreadable: {e}") from e
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise SessionError(f"session format version {version!r} is not supported (supported: {FORMAT_VERSION})")
    try:
        return doc, load_file(str(d / "strategy.safetensors")), load_file(str(d / "memory.safetensors"))
    except Exception as e:  # safetensors raises its own error types
        raise SessionError(f"session tensors in {str(d)!r} are unreadable: {e}") from e


def check_compatible(doc: dict[str, Any], header: dict[str, Any], where: Optional[str] = None) -> None:
    for key in ("model", "strategy", "memory"):
        if doc.get(key) != header.get(key):
            raise SessionError(
                f"saved session {where or ''} was made with {key} {doc.get(key)!r}, this engine has {header.get(key)!r}"
            )
