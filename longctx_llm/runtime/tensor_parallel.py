"""Keeping the processes of a tensor-parallel run in step: rank 0 leads, the others follow.

A model split over N processes (``model.tp``, :mod:`longctx_llm.model.parallel`) runs each forward on all of them
together, so every process must run the same forwards in the same order. Under ``torchrun ... -m longctx_llm.cli``
only rank 0 reads the command's input (a prompt, HTTP requests, stdin) and prints: it **leads**. Each engine it builds
from a pipeline (:func:`adopt`) is announced to the other processes, and each engine call that may run the model
(:data:`STEPS`: ``chat``, ``stream_chat``, ``complete``, ``extend``, ``score``..., the model's first load, an
evaluation through :func:`call`) is sent to them before it runs, one at a time under one lock. The other ranks
**follow** (:func:`follow`): they build the same engines and make the same calls on them, discarding the results.

A stream is followed step by step: rank 0 sends each ``next`` it takes and an early ``close``, so every process stops
at the same token, and a request waiting for a busy session waits outside the lock (the stream holding that session
goes on meanwhile). Every step carries a seed that all processes start it from, so sampling without a seed draws the
same tokens everywhere (the logits are the same after the all-reduce). A ``stop`` message ends the followers.

In a script of one's own under torchrun, where every rank runs the same code, none of this is needed: an engine of a
``model.tp`` > 1 pipeline works as it is, and this module stays idle (no process leads).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import itertools
import logging
import os
import pickle
import queue
import threading
import time
from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError, InputError, SessionError
from ..model import parallel
from .stream import TextStream

logger = logging.getLogger(__name__)

#: the engine calls that may run the model or change what a later call feeds it: each runs on every process.
#: A new public engine call that runs forwards belongs here.
STEPS = ("chat", "stream_chat", "complete", "complete_ids", "stream", "complete_batch", "score", "perplexity",
         "extend", "reset_session")
#: of those, the calls that hold a session while they run: the position of their ``session_id`` argument
SESSION_ARG = {"chat": 1, "stream_chat": 1, "extend": 0}


# ------------------------------------------------------------------------------------------------------------------
# How messages travel
# ------------------------------------------------------------------------------------------------------------------


class Broadcast:
    """Messages from rank 0 to every process over the run's gloo control group."""

    def send(self, message: tuple) -> None:
        parallel.broadcast(message)

    def recv(self) -> tuple:
        return parallel.broadcast(None)


class Pipe:
    """Messages between threads of one process (tests of the protocol without a second process)."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()

    def send(self, message: tuple) -> None:
        self._queue.put(pickle.loads(pickle.dumps(message)))  # what the other side gets is a copy, as over gloo

    def recv(self) -> tuple:
        return self._queue.get()


# ------------------------------------------------------------------------------------------------------------------
# Rank 0
# ------------------------------------------------------------------------------------------------------------------


class Leader:
    """Rank 0's side: sends each step before running it, one step at a time."""

    def __init__(self, channel, world_size: int):
        self.channel, self.world_size = channel, world_size
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._dropped: collections.deque = collections.deque()  # streams let go unclosed: closed at the next step

    def inside(self) -> bool:
        """Whether this thread is running a step (a call inside one runs as it is: the followers run it too)."""
        return getattr(self._local, "depth", 0) > 0

    def new_id(self) -> int:
        return next(self._ids)

    @contextlib.contextmanager
    def step(self, message: tuple, *, engine=None, session_id: Optional[str] = None):
        """Send ``message`` (and a seed every process starts the step from), then run the block, under the lock.

        With ``session_id`` the step waits outside the lock until that session is free, so the stream holding it
        can take its own steps meanwhile."""
        self._enter(engine, session_id)
        try:
            while self._dropped:
                self.channel.send(("close", self._dropped.popleft()))
            seed = int(torch.randint(0, 2**62, (1,)).item())
            self.channel.send((*message, seed))
            torch.manual_seed(seed)
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                yield
            finally:
                self._local.depth -= 1
        finally:
            self._lock.release()

    def _enter(self, engine, session_id: Optional[str]) -> None:
        """Take the lock, once ``session_id`` (if any) is free: a call that waited for a session inside the lock would
        keep the stream holding that session from ever taking its next step. Only steps take sessions, so a session
        found free under the lock stays free for this step."""
        if session_id is None or engine is None:
            self._lock.acquire()
            return
        wait = float(getattr(engine, "session_wait_s", 300.0))
        deadline = time.monotonic() + wait
        while True:
            self._lock.acquire()
            session = engine.get_session(session_id)
            if session is None or not session.lock.locked():
                return
            self._lock.release()
            if not session.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                raise SessionError(
                    f"session {session_id!r} stayed busy for {wait:.0f} s: another request holds it, or a stream of it "
                    "was neither read to the end nor closed (call .close() on streams you abandon)"
                )
            session.lock.release()  # free now: take the lock and look again

    def stop(self, wait_s: float = 60.0) -> bool:
        """End the followers (once the step running now, if any, is over; a step that never ends, e.g. a thread
        killed mid-forward, leaves them to torchrun, which ends every process when rank 0 exits). Whether they were
        told to stop."""
        if not self._lock.acquire(timeout=wait_s):
            logger.warning("tensor parallel: a step is still running after %.0f s; not telling the others to stop", wait_s)
            return False
        try:
            while self._dropped:
                self.channel.send(("close", self._dropped.popleft()))
            self.channel.send(("stop",))
        finally:
            self._lock.release()
        return True

    def run(self, engine, name: str, method: Callable, args: tuple, kwargs: dict) -> Any:
        """An engine call on every process: sent, then run here."""
        if self.inside():
            return method(*args, **kwargs)
        _check_picklable(name, args, kwargs)
        pos = SESSION_ARG.get(name)
        sid = kwargs.get("session_id", args[pos] if pos is not None and len(args) > pos else None)
        stream_id = self.new_id()
        with self.step(("call", engine._tp_key, name, args, kwargs, stream_id), engine=engine,
                       session_id=sid if isinstance(sid, str) and sid else None):
            result = method(*args, **kwargs)
        if isinstance(result, TextStream):
            return LeaderStream(self, result, stream_id)
        return result


def _check_picklable(name: str, args: tuple, kwargs: dict) -> None:
    try:
        pickle.dumps((args, kwargs))
    except Exception as e:  # noqa: BLE001 - what pickling refuses varies
        raise InputError(
            f"{name}: its arguments cannot be sent to the other tensor-parallel processes ({type(e).__name__}: "
            f"{str(e)[:160]}); pass plain data (strings, numbers, lists, dicts, tensors)"
        ) from None


class LeaderStream(TextStream):
    """Rank 0's stream of a call every process runs: each step it takes, and an early close, is sent first."""

    def __init__(self, leader: Leader, inner: TextStream, stream_id: int):
        self._leader, self._inner, self._id = leader, inner, stream_id
        self.completion = None
        self._closed = False

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        with self._leader.step(("next", self._id)):
            try:
                return next(self._inner)
            except StopIteration:
                self.completion = self._inner.completion
                self._closed = True
                raise
            except BaseException:
                self._closed = True
                raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._leader.step(("close", self._id)):
            self._inner.close()

    def __del__(self):
        if not getattr(self, "_closed", True):
            self._leader._dropped.append(self._id)  # the inner stream's own finaliser frees its session here


def _leading(cls: type) -> type:
    """A subclass of an engine class whose model-running calls go through the leader (made once per class)."""
    made = _LEADING.get(cls)
    if made is not None:
        return made

    def stepping(name: str):
        base = getattr(cls, name)

        def method(self, *args, **kwargs):
            return self._tp_leader.run(self, name, base.__get__(self), args, kwargs)

        method.__name__, method.__qualname__, method.__doc__ = name, f"{cls.__name__}.{name}", base.__doc__
        return method

    def loaded(self):
        if self._validated or self._tp_leader.inside():
            return cls.loaded.__get__(self)
        with self._tp_leader.step(("load", self._tp_key)):
            return cls.loaded.__get__(self)

    members = {name: stepping(name) for name in STEPS if hasattr(cls, name)}
    members["loaded"] = property(loaded, doc=cls.loaded.__doc__)
    made = type(f"TensorParallel{cls.__name__}", (cls,), members)
    _LEADING[cls] = made
    return made


_LEADING: dict[type, type] = {}
_LEADER: Optional[Leader] = None


def adopt(engine, config) -> Any:
    """Called for each engine built from a pipeline. On rank 0 of a torchrun run, the engine's model-running calls
    go to every process from now on, and the followers build the same engine; elsewhere it is returned as it is."""
    leader = _LEADER
    if leader is None:
        return engine
    tp = config.model.tp
    if tp != leader.world_size:
        raise ConfigError(
            f"model.tp: {tp} does not match the {leader.world_size} processes torchrun started (WORLD_SIZE="
            f"{leader.world_size}); valid: model.tp: {leader.world_size}, or start the command without torchrun"
        )
    key = leader.new_id()
    with leader.step(("engine", key, config)):
        pass
    engine.__class__ = _leading(type(engine))
    engine._tp_leader, engine._tp_key = leader, key
    return engine


def call(fn: Callable[..., Any], engine, *args: Any, **kwargs: Any) -> Any:
    """``fn(engine, *args, **kwargs)`` on every process (a measurement that drives the engine's states itself, as
    ``longctx eval`` does); ``fn`` must be a module-level function. Elsewhere simply ``fn(engine, ...)``."""
    leader = getattr(engine, "_tp_leader", None)
    if leader is None or leader.inside():
        return fn(engine, *args, **kwargs)
    if "<locals>" in fn.__qualname__:
        raise TypeError(f"tensor_parallel.call: {fn.__qualname__} is not a module-level function")
    _check_picklable(fn.__qualname__, args, kwargs)
    with leader.step(("fn", engine._tp_key, fn.__module__, fn.__qualname__, args, kwargs)):
        return fn(engine, *args, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# The other ranks
# ------------------------------------------------------------------------------------------------------------------


def _function(module: str, qualname: str) -> Callable:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def follow(build: Callable[[Any], Any], channel=None) -> None:
    """Run every step rank 0 sends on engines of one's own (``build(config)`` makes one), until ``stop``.

    A step that fails here failed on rank 0 too (the same call on the same state), which reports it."""
    channel = channel or Broadcast()
    engines: dict[int, Any] = {}
    streams: dict[int, TextStream] = {}
    while True:
        message = channel.recv()
        kind = message[0]
        if kind == "stop":
            for s in streams.values():
                s.close()
            return
        try:
            if kind == "close":
                s = streams.pop(message[1], None)
                if s is not None:
                    s.close()
                continue
            torch.manual_seed(message[-1])
            if kind == "engine":
                engines[message[1]] = build(message[2])
            elif kind == "load":
                _ = engines[message[1]].loaded
            elif kind == "call":
                _, key, name, args, kwargs, stream_id, _seed = message
                result = getattr(engines[key], name)(*args, **kwargs)
                if isinstance(result, TextStream):
                    streams[stream_id] = result
            elif kind == "fn":
                _, key, module, qualname, args, kwargs, _seed = message
                _function(module, qualname)(engines[key], *args, **kwargs)
            elif kind == "next":
                s = streams.get(message[1])
                if s is not None:
                    try:
                        next(s)
                    except BaseException:
                        streams.pop(message[1], None)
                        raise
            else:
                logger.warning("tensor parallel: unknown message %r from rank 0", kind)
        except StopIteration:
            pass
        except Exception as e:  # noqa: BLE001 - rank 0 ran the same step and reports its error
            logger.debug("tensor parallel: step %s failed here as on rank 0: %s: %s", kind, type(e).__name__, e)


def run_command(command: Callable[[], int], build: Callable[[Any], Any]) -> int:
    """Run a CLI command in this process's role: alone (no torchrun), leading (rank 0: the command itself) or
    following (every other rank: prints nothing, returns 0 when rank 0 is done)."""
    global _LEADER
    w = parallel.world()
    if w is None:
        return command()
    parallel.initialize(w)
    if not w.is_leader:
        try:
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
                follow(build)
        finally:
            parallel.shutdown()
        return 0
    _LEADER = Leader(Broadcast(), w.size)
    try:
        return command()
    finally:
        leader, _LEADER = _LEADER, None
        if leader.stop():  # a step still inside a collective: leaving the groups under it could hang or abort
            parallel.shutdown()
