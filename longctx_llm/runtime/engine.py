"""The Engine: a model, a strategy, a memory, generation defaults and sessions.

Every face of the package (CLI, LangChain, LlamaIndex) is a thin layer over this class. It never branches on a
strategy's name: it asks the strategy for its window, capabilities and a state, and runs the one loop.

>>> engine = Engine("smollm2-135m-instruct", strategy="full")          # loads nothing yet
>>> engine.chat([{"role": "user", "content": "What is the capital of France?"}]).text  # doctest: +SKIP
'The capital of France is Paris.'
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from pydantic import ValidationError

from . import templates as chat_mod
from .. import registry
from ..config import GenerationConfig, PipelineConfig, PluginConfig, format_validation_error, validate_plugin_options
from ..errors import ConfigError, ContextWindowError, InputError, ResourceError, SessionError
from .generation import Completion, Delta, generate, run_to_end
from .memory import SLOT, Memory
from ..model.loading import DEFAULT_MODEL, LoadedModel, ModelHandle
from .progress import progress_bar
from .session import Session, check_compatible, check_dtype, check_restored, read_session, save_session
from .strategy import Strategy

logger = logging.getLogger(__name__)

PluginSpec = Union[str, dict, PluginConfig, Strategy, Memory, None]


def _build_plugin(kind: str, spec: PluginSpec, default: str):
    base = Strategy if kind == "strategy" else Memory
    if isinstance(spec, base):
        return spec
    if kind == "strategy" and isinstance(spec, (list, tuple)):
        from .compose import StackedStrategy

        return StackedStrategy([_build_plugin(kind, item, default) for item in spec])
    if spec is None:
        spec = default
    if isinstance(spec, str):
        if not spec.strip():
            raise ConfigError(f"{kind}: empty name (valid: {', '.join(registry.names(kind))})")
        spec = PluginConfig(name=spec)
    elif isinstance(spec, dict):
        try:
            spec = PluginConfig.model_validate(spec)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, kind)) from e
    if not isinstance(spec, PluginConfig):
        raise ConfigError(f"{kind}: expected a name, a mapping or a {base.__name__}, got {type(spec).__name__}")
    cls, options = validate_plugin_options(kind, spec, kind)
    return cls(options) if options is not None else cls()


def _out_of_memory(gen: Iterator[Delta], loaded, tokens: int, on_oom=None) -> Iterator[Delta]:
    """Pass ``gen`` through; a device out-of-memory error becomes a :class:`ResourceError` after the allocator's
    cache is emptied and ``on_oom`` (e.g. dropping a session's half-updated cache) ran, so the next request runs."""
    device = loaded.device
    try:
        return (yield from gen)
    except torch.OutOfMemoryError as e:
        if on_oom is not None:
            on_oom()
        if torch.cuda.is_available():
            # under the model's lock: another session may be capturing a CUDA graph (always inside a forward, under
            # this lock), and the allocator must not be emptied during a capture
            with loaded.lock:
                torch.cuda.empty_cache()
        raise ResourceError(
            f"out of memory on {device} for a {tokens}-token prompt ({str(e).splitlines()[0][:160]}); use a strategy "
            "with a bounded cache (streaming, rcc), a shorter prompt or a smaller dtype"
        ) from None


class TextStream:
    """An iterator of text deltas; ``completion`` is set once it is exhausted."""

    def __init__(self, gen: Iterator[Delta], on_done=None, on_close=None):
        self._gen = gen
        self._on_done = on_done
        self._on_close = on_close
        self.completion: Optional[Completion] = None
        self._closed = False

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        try:
            while True:
                d = next(self._gen)
                if d.text:
                    return d.text
        except StopIteration as stop:
            self.completion = stop.value[0]
            self._finish(ok=True)
            raise StopIteration from None
        except BaseException:
            self._finish(ok=False)
            raise

    def _finish(self, ok: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if ok and self._on_done is not None:
                self._on_done(self.completion)
        finally:
            if self._on_close is not None:
                self._on_close()

    def close(self) -> None:
        """Stop early (releases the session; what was generated stays in its cache)."""
        self._gen.close()
        self._finish(ok=False)

    def __del__(self):
        if not self._closed and self._on_close is not None:
            try:
                self._on_close()
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                pass

    def text(self) -> str:
        """Drain and return the whole text."""
        return "".join(self)


class Engine:
    """Runs prompts and chats on a local model under a long-context strategy."""

    def __init__(
        self,
        model: Union[str, ModelHandle, LoadedModel] = DEFAULT_MODEL,
        strategy: PluginSpec = "full",
        memory: PluginSpec = "buffer",
        generation: Union[GenerationConfig, dict, None] = None,
        *,
        device: str = "auto",
        dtype: str = "auto",
    ):
        if isinstance(model, LoadedModel):
            self.model_handle = ModelHandle.from_loaded(model)
        elif isinstance(model, ModelHandle):
            self.model_handle = model
        elif isinstance(model, str):
            self.model_handle = ModelHandle(model, device=device, dtype=dtype)
        else:
            raise ConfigError(f"model: expected an alias, a path or a ModelHandle, got {type(model).__name__}")
        self.strategy: Strategy = _build_plugin("strategy", strategy, "full")
        self.memory: Memory = _build_plugin("memory", memory, "buffer")
        if isinstance(generation, dict):
            try:
                generation = GenerationConfig(**generation)
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, "generation")) from e
        elif generation is not None and not isinstance(generation, GenerationConfig):
            raise ConfigError(
                f"generation: expected a mapping or a GenerationConfig, got {type(generation).__name__} {generation!r:.80}"
            )
        self.generation = generation or GenerationConfig()
        self._sessions: dict[str, Session] = {}
        self._sessions_lock = threading.Lock()
        self._validated = False

    @classmethod
    def from_config(cls, config: PipelineConfig) -> "Engine":
        return cls(
            ModelHandle(config.model.source, config.model.device, config.model.dtype, config.model.trust_remote_code),
            strategy=config.strategy,
            memory=config.memory,
            generation=config.generation,
        )

    # ---- model ---------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedModel:
        loaded = self.model_handle.get()
        if not self._validated:
            self.strategy.validate(loaded.info)
            self.strategy.prepare(loaded)
            self.memory.validate(self.strategy, loaded)
            self._validated = True
        return loaded

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model_name(self) -> str:
        return self.model_handle.source

    @property
    def context_window(self) -> Optional[int]:
        """Tokens the model attends to under the active strategy (None: unbounded)."""
        return self.strategy.context_window(self.loaded.info)

    @property
    def attention_span(self) -> int:
        """Tokens the model attends to at once under the strategy (an integer even for unbounded strategies)."""
        return self.strategy.attention_span(self.loaded.info)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer(chat_mod.check_text(text, "text"), add_special_tokens=add_special_tokens)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text, add_special_tokens=False))

    def render_chat(self, messages: Sequence[Any], *, tools=None, add_generation_prompt: bool = True) -> str:
        return chat_mod.render(
            self.tokenizer, chat_mod.normalize_messages(messages), tools=tools, add_generation_prompt=add_generation_prompt
        )

    # ---- parameters and checks ------------------------------------------------------------------------------
    def params(self, **overrides: Any) -> GenerationConfig:
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "stop" in overrides:
            stop = overrides["stop"]
            if isinstance(stop, str):
                stop = [stop]
            elif not isinstance(stop, (list, tuple)) or not all(isinstance(x, str) for x in stop):
                raise InputError(f"stop: expected a string or a list of strings, got {stop!r:.80}")
            stop = list(stop)
            overrides["stop"] = list(dict.fromkeys([*self.generation.stop, *stop]))
        if not overrides:
            return self.generation
        try:
            return GenerationConfig(**{**self.generation.model_dump(), **overrides})
        except ValidationError as e:
            raise InputError(format_validation_error(e, "generation")) from e

    def _strategies_fitting(self, n: int) -> list[str]:
        fits = []
        info = self.loaded.info
        for p in registry.available("strategy"):
            try:
                s = p.load()()
                s.validate(info)
                w = s.context_window(info)
            except Exception:  # noqa: BLE001 - a strategy that needs options or weights cannot be listed
                continue
            if w is None or w >= n:
                fits.append(f"{p.name} ({'unbounded' if w is None else w})")
        return fits

    def check_fits(self, n_tokens: int) -> None:
        if n_tokens <= 0:
            raise InputError("prompt: empty prompt (0 tokens); give some text")
        if self.strategy.capabilities.unbounded:
            return
        window = self.context_window
        if window is not None and n_tokens > window:
            fits = self._strategies_fitting(n_tokens)
            hint = f"installed strategies that fit it: {', '.join(fits)}" if fits else "no installed strategy fits it"
            raise ContextWindowError(
                f"prompt has {n_tokens} tokens but strategy {self.strategy.name!r} has a {window}-token window "
                f"on {self.model_name}; {hint}"
            )

    # ---- stateless completion --------------------------------------------------------------------------------
    def _run(self, ids: list[int], params: GenerationConfig, state=None) -> Iterator[Delta]:
        loaded = self.loaded
        self.check_fits(len(ids))
        state = state or self.strategy.new_state(loaded, 1)
        tensor = torch.tensor([ids], dtype=torch.long, device=loaded.device)
        gen = generate(state, loaded.tokenizer, tensor, None, params, loaded.eos_token_ids, window=self.context_window)
        return _out_of_memory(gen, loaded, len(ids))

    def _prompt_ids(self, prompt: str) -> list[int]:
        if not isinstance(prompt, str):
            raise InputError(f"prompt: expected a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise InputError("prompt: empty prompt; give some text")
        return self.tokenize(prompt)

    def complete(self, prompt: str, **gen: Any) -> Completion:
        """Continue a plain-text prompt (no chat template)."""
        params = self.params(**gen)
        return run_to_end(self._run(self._prompt_ids(prompt), params))[0]

    def complete_ids(self, ids: Sequence[int], **gen: Any) -> Completion:
        """Continue a prompt given as token ids (no chat template, no tokenisation round trip)."""
        ids = [int(t) for t in ids]
        if not ids:
            raise InputError("prompt: empty prompt (0 tokens); give some tokens")
        return run_to_end(self._run(ids, self.params(**gen)))[0]

    def stream(self, prompt: str, **gen: Any) -> TextStream:
        params = self.params(**gen)
        return TextStream(self._run(self._prompt_ids(prompt), params))

    def complete_batch(self, prompts: Sequence[str], **gen: Any) -> list[Completion]:
        """Several plain-text prompts in one left-padded batch (strategies with ``capabilities.batching``)."""
        if not prompts:
            return []
        if not self.strategy.capabilities.batching:
            return [self.complete(p, **gen) for p in prompts]
        params = self.params(**gen)
        rows = [self._prompt_ids(p) for p in prompts]
        for r in rows:
            self.check_fits(len(r))
        loaded = self.loaded
        width = max(len(r) for r in rows)
        pad = loaded.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=loaded.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=loaded.device)
        state = self.strategy.new_state(loaded, len(rows))
        gen_ = generate(state, loaded.tokenizer, ids, mask, params, loaded.eos_token_ids, window=self.context_window)
        return run_to_end(gen_)

    # ---- chat and sessions ----------------------------------------------------------------------------------
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

    def _header(self) -> dict[str, Any]:
        return {
            "model": self.model_handle.source,
            "strategy": self.strategy.identity(),  # speed-only options (static_cache, ...) do not bind a session
            "memory": self.memory.describe(),
        }

    def save_session(self, session_id: str, directory, *, overwrite: bool = False) -> str:
        with self._sessions_lock:
            if session_id not in self._sessions:
                raise SessionError(f"no session {session_id!r} (sessions: {', '.join(self._sessions) or 'none'})")
            s = self._sessions[session_id]
        return str(save_session(s, directory, self._header(), overwrite=overwrite, wait_s=self.session_wait_s))

    def load_session(self, directory, session_id: Optional[str] = None) -> Session:
        """Restore a saved session (optionally under a new id); replaces a live session of that id."""
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

    #: seconds a request waits for a session that another request (or an unread, unclosed stream) holds
    session_wait_s: float = 300.0

    def _acquire(self, session: Session) -> None:
        if not session.lock.acquire(timeout=self.session_wait_s):
            raise SessionError(
                f"session {session.id!r} stayed busy for {self.session_wait_s:.0f} s: another request holds it, or a "
                "stream of it was neither read to the end nor closed (call .close() on streams you abandon)"
            )

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
        msgs = chat_mod.normalize_messages(messages)
        if all(not (m["content"] or "").strip() and not m.get("tool_calls") for m in msgs if m["role"] == "user"):
            raise InputError("messages: the user messages are empty; give some text")
        loaded = self.loaded
        if session_id is None:
            memory = self.memory.new_state(loaded)
            text = chat_mod.render(loaded.tokenizer, memory.view(msgs), tools=tools)
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
            text = chat_mod.render(loaded.tokenizer, view_msgs, tools=tools)
            ids = self._reuse_generated(session, text, self.tokenize(text, add_special_tokens=False))
            cache_ids = self._cache_view(session, ids)
            self.check_fits(len(cache_ids))
            feed = self._sync(session, cache_ids)
            tensor = torch.tensor([feed], dtype=torch.long, device=loaded.device)
            gen = generate(
                session.state,
                loaded.tokenizer,
                tensor,
                None,
                params,
                loaded.eos_token_ids,
                window=self.context_window,
                fed_tokens=[session.cached_ids],
                prompt_tokens=[len(ids)],
            )
        except BaseException:
            session.lock.release()
            raise

        def on_done(completion: Completion) -> None:
            session.history = [*msgs, {"role": "assistant", "content": completion.text}]
            final = ids
            if session.memory.wants_token_ids:  # the finished conversation as the next turn will render it
                done = chat_mod.render(
                    loaded.tokenizer, session.memory.view(session.history), tools=tools, add_generation_prompt=False
                )
                final = self.tokenize(done, add_special_tokens=False)
            self._end_turn(session, final)

        def reset_state() -> None:  # a forward that ran out of memory may have half-updated the cache
            session.state = self.strategy.new_state(loaded, 1)
            session.cached_ids = []
            session.memory.reset()

        return _out_of_memory(gen, loaded, len(ids), reset_state), on_done, session.lock.release

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

    # ---- scoring ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def score(self, ids: Union[Sequence[int], torch.Tensor], *, chunk_size: int = 1024) -> torch.Tensor:
        """Per-token negative log-likelihoods (n-1,) of a token sequence under the active strategy.

        Fed in pieces of ``chunk_size`` tokens so memory stays bounded (logits are never held for the whole text).
        The strategy's window is not enforced here: measuring plain attention past its window is the point of
        perplexity benchmarks.
        """
        loaded = self.loaded
        ids = torch.as_tensor(ids, dtype=torch.long).flatten()
        n = ids.numel()
        if n < 2:
            raise InputError(f"score: need at least 2 tokens, got {n}")
        state = self.strategy.new_state(loaded, 1)
        ids = ids.to(loaded.device)
        out = []
        with progress_bar(total=n - 1, desc="score", unit="tok", enabled=n - 1 > 2 * chunk_size) as bar:
            for start in range(0, n - 1, chunk_size):
                piece = ids[start : min(start + chunk_size, n - 1)]
                logits = state.forward(piece[None], all_logits=True)[0].float()  # (T, V)
                targets = ids[start + 1 : start + 1 + piece.numel()]
                out.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
                bar.update(piece.numel())
        return torch.cat(out).cpu()

    def perplexity(self, ids, **kwargs: Any) -> float:
        return math.exp(self.score(ids, **kwargs).mean().item())

    def __repr__(self) -> str:
        return f"Engine(model={self.model_handle!r}, strategy={self.strategy!r}, memory={self.memory.describe()})"
