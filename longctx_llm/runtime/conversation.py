"""Chat turns and raw-text turns: what the engine feeds a session's cache, and when a turn ends.

:class:`Conversations` is one part of :class:`~.engine.Engine` (with :class:`~.sessions.SessionStore`, whose sessions
and locks it uses, and :class:`~.completion.Completions`, which runs stateless chats). It keeps a session's cache in
step with the rendered conversation, feeding only what is new (:meth:`~Conversations._sync`).
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

import torch

from ..errors import InputError, SessionError
from . import templates
from .generation import Completion, Delta
from .memory import SLOT
from .session import Session
from .stream import TextStream, out_of_memory


class Conversations:
    """Chats (``chat``, ``stream_chat``) and raw token turns (``extend``), stateless or through a session."""

    def _sync(self, session: Session, ids: list[int], min_feed: int = 1) -> list[int]:
        """Bring the session's cache to hold ``ids`` feeding as little as possible; return the tokens to feed.

        ``ids`` are what the cache should hold (the memory's :meth:`~longctx_llm.runtime.memory.MemoryState.token_view`:
        slot placeholders, then tokens). A strategy that cannot rewind (an append-only streaming cache) gets a
        fresh state when the text diverges from what it holds, so the model never sees stale tokens.
        """
        # at least the last ``min_feed`` tokens are fed (their logits are wanted), even if they are cached already
        common = min(session.common_prefix(ids), len(ids) - min_feed)
        if common < len(session.cached_ids):
            if self.strategy.capabilities.rewind:
                session.state.rewind(common)
                del session.cached_ids[common:]
            else:
                session.state = self.strategy.new_state(self.loaded, 1)
                session.cached_ids = []
                common = 0
        feed = ids[common:]
        if SLOT in feed:
            raise SessionError(
                f"session {session.id!r}: the memory's slots are no longer in the cache; reset the session"
            )
        session.cached_ids.extend(feed)
        return feed

    def _reuse_generated(self, session: Session, text: str, ids: list[int]) -> list[int]:
        """Keep the tokens the session generated when the rendered conversation holds the same text.

        A reply re-tokenises differently from how it was generated ("Al" + "ign" vs "Align"), which would make the
        cache diverge from the new prompt right after the last turn's start. When the cached tokens decode to a
        prefix of the new prompt's text, the prompt is that cache plus the rest, tokenised alone, so only what is
        new is fed (and an append-only cache never holds stale tokens). Strategies that rewind instead re-feed from
        where the tokens differ (a few tokens), so their cache stays exactly what a stateless run would hold.
        """
        cached = session.cached_ids
        if self.strategy.capabilities.rewind or not cached or SLOT in cached:
            return ids
        if session.common_prefix(ids) == len(cached):
            return ids
        prefix = self.tokenizer.decode(cached, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if not text.startswith(prefix):
            return ids
        rest = text[len(prefix):]
        return list(cached) + (self.tokenize(rest, add_special_tokens=False) if rest else [])

    def _cache_view(self, session: Session, ids: list[int]) -> list[int]:
        """The memory's view of a rendered conversation's tokens (resetting a memory the client's edit broke)."""
        view = session.memory.token_view(ids)
        if view is None:
            session.memory.reset()
            view = session.memory.token_view(ids) or list(ids)
        return view

    def _end_turn(self, session: Session, ids: list[int]) -> None:
        session.token_ids = list(ids)
        session.turns += 1
        if session.memory.wants_token_ids:
            session.turn_ids = list(ids)
        session.memory.on_turn_end(session.history, session)

    def extend(self, session_id: str, ids: Sequence[int], *, end_turn: bool = True, all_logits: bool = False):
        """Append raw token ids (no chat template) to a session, as a turn of text.

        This is the session API under evaluations (``longctx eval gap`` feeds a context as turns of K tokens): the
        memory sees each turn end like a chat turn (a compressing memory compresses it). Returns the logits of the
        appended tokens (1, len(ids), V) when ``all_logits``, else those of the last one (1, 1, V).
        """
        ids = [int(t) for t in ids]
        if not ids:
            raise InputError("extend: no tokens given")
        session = self.session(session_id)
        self._acquire(session)
        try:
            if session.history:
                raise SessionError(
                    f"session {session_id!r} holds a chat: extend() feeds raw text turns to sessions of its own "
                    "(a chat turn re-renders the history, which raw turns are not part of)"
                )
            full = [*session.token_ids, *ids]
            view = self._cache_view(session, full)
            self.check_fits(len(view))
            feed = self._sync(session, view, min_feed=len(ids) if all_logits else 1)
            tensor = torch.tensor([feed], dtype=torch.long, device=self.loaded.device)
            logits = session.state.forward(tensor, all_logits=all_logits)
            if all_logits:
                logits = logits[:, -len(ids):]
            session.token_ids = full
            if end_turn:
                self._end_turn(session, full)
        finally:
            session.lock.release()
        return logits

    def _chat_stream(self, messages, session_id, tools, params) -> tuple[Iterator[Delta], Any, Any]:
        if isinstance(messages, str):
            if session_id is None:
                messages = [{"role": "user", "content": messages}]
            else:
                messages = [*self.session(session_id).history, {"role": "user", "content": messages}]
        msgs = templates.normalize_messages(messages)
        if all(not (m["content"] or "").strip() and not m.get("tool_calls") for m in msgs if m["role"] == "user"):
            raise InputError("messages: the user messages are empty; give some text")
        loaded = self.loaded
        if session_id is None:
            memory = self.memory.new_state(loaded)
            text = templates.render(loaded.tokenizer, memory.view(msgs), tools=tools)
            ids = self.tokenize(text, add_special_tokens=False)
            return self._run(ids, params), None, None
        session = self.session(session_id)
        self._acquire(session)
        try:
            if session.turns and not session.history:
                raise SessionError(
                    f"session {session_id!r} was fed raw text turns with extend(); chat in another session"
                )
            view_msgs = session.memory.view(msgs)
            text = templates.render(loaded.tokenizer, view_msgs, tools=tools)
            ids = self._reuse_generated(session, text, self.tokenize(text, add_special_tokens=False))
            cache_ids = self._cache_view(session, ids)
            self.check_fits(len(cache_ids))
            feed = self._sync(session, cache_ids)
            gen = self._decode(session.state, feed, params, prompt_tokens=len(ids), fed_tokens=session.cached_ids)
        except BaseException:
            session.lock.release()
            raise

        def on_done(completion: Completion) -> None:
            session.history = [*msgs, {"role": "assistant", "content": completion.text}]
            final = ids
            if session.memory.wants_token_ids:  # the finished conversation as the next turn will render it
                done = templates.render(
                    loaded.tokenizer, session.memory.view(session.history), tools=tools, add_generation_prompt=False
                )
                final = self.tokenize(done, add_special_tokens=False)
            self._end_turn(session, final)

        def reset_state() -> None:  # a forward that ran out of memory may have half-updated the cache
            session.state = self.strategy.new_state(loaded, 1)
            session.cached_ids = []
            session.memory.reset()

        return out_of_memory(gen, loaded, len(ids), reset_state), on_done, session.lock.release

    def chat(self, messages, session_id: Optional[str] = None, *, tools=None, **gen: Any) -> Completion:
        """Answer a conversation.

        ``messages`` is the whole conversation (a list of dicts), or a string: a new user turn appended to the
        session's history. With ``session_id`` the session's cache is reused, so only new tokens are fed.
        """
        stream = self.stream_chat(messages, session_id, tools=tools, **gen)
        for _ in stream:
            pass
        return stream.completion

    def stream_chat(self, messages, session_id: Optional[str] = None, *, tools=None, **gen: Any) -> TextStream:
        params = self.params(**gen)
        g, on_done, on_close = self._chat_stream(messages, session_id, tools, params)
        return TextStream(g, on_done=on_done, on_close=on_close)
