"""The engine's sessions: the table of live sessions, the lock each one holds while a request runs, and saving
and restoring them (the files themselves are :mod:`.session`'s).

:class:`SessionStore` is one part of :class:`~.engine.Engine` (its other parts: :class:`~.turns.SessionTurns`,
:class:`~.completion.Completions`). It reads from the engine ``loaded``, ``strategy``, ``memory`` and
``model_handle``.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

from ..errors import InputError, SessionError
from .memory import SLOT
from .session import Session, check_compatible, check_dtype, check_restored, read_session, save_session


class SessionStore:
    """Live sessions by id; each request on a session holds that session's lock."""

    #: seconds a request waits for a session that another request (or an unread, unclosed stream) holds
    session_wait_s: float = 300.0

    def _init_sessions(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()

    def session(self, session_id: str) -> Session:
        """The session with this id (created on first use)."""
        if not isinstance(session_id, str) or not session_id:
            raise InputError(f"session_id: expected a non-empty string, got {session_id!r}")
        with self._sessions_lock:
            s = self._sessions.get(session_id)
            if s is None:
                loaded = self.loaded
                s = Session(session_id, self.strategy.new_state(loaded, 1), self.memory.new_state(loaded))
                self._sessions[session_id] = s
            return s

    def get_session(self, session_id: str) -> Optional[Session]:
        """The live session with this id, or None (never creates one, never loads the model)."""
        with self._sessions_lock:
            return self._sessions.get(session_id)

    def sessions(self) -> list[str]:
        with self._sessions_lock:
            return list(self._sessions)

    def reset_session(self, session_id: str) -> None:
        with self._sessions_lock:
            self._sessions.pop(session_id, None)

    def _acquire(self, session: Session) -> None:
        if not session.lock.acquire(timeout=self.session_wait_s):
            raise SessionError(
                f"session {session.id!r} stayed busy for {self.session_wait_s:.0f} s: another request holds it, or a "
                "stream of it was neither read to the end nor closed (call .close() on streams you abandon)"
            )

    # ---- saved sessions -------------------------------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {
            "model": self.model_handle.source,
            "strategy": self.strategy.identity(),  # speed-only options (static_cache, ...) do not bind a session
            "memory": self.memory.describe(),
        }

    def _check_whole_model(self, what: str) -> None:
        if getattr(self.model_handle, "tp", 1) > 1:
            raise SessionError(
                f"{what}: sessions cannot be saved or restored with model.tp: {self.model_handle.tp} (each process "
                "holds the cache of its own attention heads); valid: model.tp: 1"
            )

    def save_session(self, session_id: str, directory, *, overwrite: bool = False) -> str:
        self._check_whole_model("save_session")
        with self._sessions_lock:
            if session_id not in self._sessions:
                raise SessionError(f"no session {session_id!r} (sessions: {', '.join(self._sessions) or 'none'})")
            s = self._sessions[session_id]
        return str(save_session(s, directory, self._header(), overwrite=overwrite, wait_s=self.session_wait_s))

    def load_session(self, directory, session_id: Optional[str] = None) -> Session:
        """Restore a saved session (optionally under a new id); replaces a live session of that id."""
        self._check_whole_model("load_session")
        doc, s_tensors, m_tensors = read_session(directory)
        where = str(directory)
        check_compatible(doc, self._header(), where)
        loaded = self.loaded
        check_dtype(doc, loaded.dtype, where)
        vocab = loaded.model.get_input_embeddings().num_embeddings
        ids = [t for key in ("cached_ids", "token_ids") for t in doc.get(key) or [] if t != SLOT]
        if ids and max(ids) >= vocab:
            raise SessionError(f"saved session {where!r} holds token id {max(ids)}, beyond this model's vocabulary ({vocab})")
        sid = session_id or doc["id"]
        s = Session(sid, self.strategy.new_state(loaded, 1), self.memory.new_state(loaded))
        try:  # the saved state is untrusted: whatever its loaders trip over is one clear error
            s.state.load_state_dict(s_tensors, doc["strategy_meta"])
            s.memory.load_state_dict(m_tensors, doc["memory_meta"])
        except SessionError as e:
            raise SessionError(f"saved session {where!r}: {e}") from None
        except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
            raise SessionError(f"saved session {where!r} has a malformed state: {type(e).__name__}: {str(e)[:200]}") from e
        s.history = doc["history"]
        s.cached_ids = doc["cached_ids"]
        check_restored(s, repr(where))
        s.token_ids = doc.get("token_ids", [t for t in s.cached_ids if t != SLOT])
        s.turns = doc["turns"]
        with self._sessions_lock:
            self._sessions[sid] = s
        return s
