"""Continuous (iteration-level) batching: concurrent requests' decode steps run as one forward.

The :class:`Scheduler` owns one thread that runs every request submitted to it, step by step:

1. requests join between steps, up to ``max_batch`` running (more wait in a queue of ``max_queue``; beyond it they
   wait in line all the same, or with ``when_full: refuse``, the server's choice, get a
   :class:`~longctx_llm.errors.BusyError`); a reader that closes its stream while it waits leaves the line;
2. a new request's prompt is fed in pieces of at most ``max_batch_tokens`` per step, between the running decodes,
   so a long prompt does not stall the others;
3. every running request samples its next token (its own parameters and seed) and its text goes out;
4. the requests whose states the strategy's pool accepts (:meth:`~.strategy.Strategy.row_pool`: plain KV caches,
   their seams per row; StreamingLLM's rings; RCC's decoders) feed their tokens as the rows of one forward (:class:`~.batch_pool.RowPool`);
   the others feed theirs one forward each. A lone request decodes on its own state, exactly as without the
   scheduler.

Each session keeps its own model-side state between turns: a request works on it while it runs (under the session's
lock, held by the caller), and a pooled row's new entries go back to it when the reply ends. A reader that closes
its stream early frees its row at the next step; the other rows are untouched.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

from ..config import BatchingConfig, GenerationConfig
from ..errors import BusyError
from . import aio
from .batch_pool import pool_for
from .row_pool import RowPool
from .generation import Completion, Delta, RowDecoder, make_generator, sample

logger = logging.getLogger(__name__)

#: every scheduler alive, stopped at interpreter exit
_LIVE: "weakref.WeakSet[Scheduler]" = weakref.WeakSet()


def _piece_length(req: "Request", budget: int) -> int:
    """How much of the prompt to feed this step: the budget, cut to the state's alignment (at least one aligned
    piece, so a prompt always moves on)."""
    left = len(req.feed) - req.prefilled
    align = getattr(req.state, "prefill_align", None)
    if budget >= left or not align:
        return min(budget, left)
    return min(left, max(align, budget // align * align))


@atexit.register
def _stop_all() -> None:
    for scheduler in list(_LIVE):
        scheduler.stop()


@dataclass(eq=False)
class Request:
    """One reply: the state it runs on, what to feed first, how to decode, and where its output goes."""

    state: Any  # StrategyState
    feed: list[int]
    params: GenerationConfig
    row: RowDecoder
    window: Optional[int]
    prompt_tokens: int
    fed_tokens: Optional[list[int]] = None  # the session's record of its cache (extended as tokens are fed)
    keep_state: bool = True  # a session's state: a pooled row's new entries go back to it
    out: "queue.SimpleQueue" = field(default_factory=queue.SimpleQueue)
    released: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False
    given_up: Optional[threading.Event] = None  # set by an async caller that stopped waiting (aio.given_up)
    generator: Optional[torch.Generator] = None
    prefilled: int = 0
    logits: Optional[torch.Tensor] = None  # (V,) of the last fed token, waiting to be sampled
    pending: Optional[int] = None  # the token sampled last, to be fed at the next step
    sampled: int = 0
    pooled: bool = False
    gained: list[int] = field(default_factory=list)  # tokens fed as a pool row (not yet in the session's state)
    t0: float = 0.0
    t1: float = 0.0

    @property
    def closed(self) -> bool:
        """Its reader closed the stream, or its async caller stopped waiting."""
        return self.cancelled or (self.given_up is not None and self.given_up.is_set())

    def drop_unfed(self) -> None:
        """It ended during its prompt: the session's record of its cache drops what was never fed."""
        left = len(self.feed) - self.prefilled
        if left and self.fed_tokens is not None:
            del self.fed_tokens[len(self.fed_tokens) - left :]
            self.prefilled = len(self.feed)

    @property
    def seen(self) -> int:
        """Tokens the request's sequence holds (its state's, plus those fed as a pool row)."""
        return self.state.seen + len(self.gained)


class Scheduler:
    """Runs submitted requests in one thread, batching their decode steps (see the module docstring)."""

    def __init__(self, strategy, loaded, options: BatchingConfig):
        self.strategy, self.loaded, self.options = strategy, loaded, options
        self.pool: Optional[RowPool] = pool_for(strategy, loaded)
        self._cond = threading.Condition()
        self._waiting: list[Request] = []
        self._running: list[Request] = []
        self._thread: Optional[threading.Thread] = None
        self._serial_logged = False
        self._stopping = False
        _LIVE.add(self)
        self.steps = 0  # decode forwards run (pooled forwards count once)

    # ---- the callers' side ---------------------------------------------------------------------------------------
    def submit(self, state, feed: list[int], params: GenerationConfig, *, tokenizer, eos_token_ids, window,
               prompt_tokens: int, fed_tokens: Optional[list[int]] = None, keep_state: bool = True) -> Iterator[Delta]:
        """Queue a reply; returns the iterator of its text deltas (its return value: ``[Completion]``)."""
        req = Request(
            state=state, feed=list(feed), params=params, row=RowDecoder(tokenizer, params, eos_token_ids),
            window=window, prompt_tokens=prompt_tokens, fed_tokens=fed_tokens, keep_state=keep_state,
            generator=make_generator(params, self.loaded.device), given_up=aio.given_up(),
        )
        with self._cond:
            full = len(self._waiting) >= self.options.max_queue + max(0, self.options.max_batch - len(self._running))
            if full and self.options.when_full == "refuse":
                raise BusyError(
                    f"the server is busy: {len(self._running)} requests running (max_batch "
                    f"{self.options.max_batch}) and {len(self._waiting)} waiting (max_queue "
                    f"{self.options.max_queue}); try again shortly"
                )
            # when_full: wait — the request waits in line beyond max_queue; its reader may still close it there
            req.t0 = time.perf_counter()
            self._stopping = False
            self._waiting.append(req)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="longctx-batching", daemon=True)
                self._thread.start()
            self._cond.notify()
        return self._deltas(req)

    def stop(self, wait_s: float = 10.0) -> None:
        """End the thread once nothing runs (at interpreter exit: a daemon thread still inside a torch call when
        Python finalizes aborts the process)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    def _deltas(self, req: Request) -> Iterator[Delta]:
        try:
            while True:
                item = req.out.get()
                if isinstance(item, Delta):
                    yield item
                elif isinstance(item, Completion):
                    return [item]
                else:
                    raise item
        finally:
            if not req.released.is_set():  # the reader stopped early: free the row, then give the state back
                with self._cond:
                    req.cancelled = True
                    self._cond.notify()
                if threading.current_thread() is not self._thread:  # (a collector may close it on our thread)
                    req.released.wait()

    @property
    def running(self) -> int:
        with self._cond:
            return len(self._running)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    # ---- the scheduler's thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._running:
                    if self._stopping or (not self._cond.wait(timeout=30.0) and not self._waiting and not self._running):
                        self._thread = None  # idle: the next submit starts a thread again
                        return
                dropped = [r for r in self._waiting if r.closed]  # closed by their readers before their turn
                for req in dropped:
                    self._waiting.remove(req)
                while self._waiting and len(self._running) < self.options.max_batch:
                    self._running.append(self._waiting.pop(0))
                running = list(self._running)
            for req in dropped:
                self._finish(req)
            try:
                self._iteration(running)
            except BaseException as exc:  # noqa: BLE001 - never leave a reader waiting: fail what was running
                logger.exception("batching: a step failed")
                for req in running:
                    if not req.released.is_set():
                        self._fail(req, exc)

    def _iteration(self, running: list[Request]) -> None:
        for req in running:
            if req.closed:
                self._finish(req)
        running = [r for r in running if not r.released.is_set()]
        # 1. prompts, in pieces between the decodes
        budget = self.options.max_batch_tokens
        for req in running:
            if req.prefilled < len(req.feed) and budget > 0:
                piece = req.feed[req.prefilled : req.prefilled + _piece_length(req, budget)]
                try:
                    if not req.prefilled:  # the reply included: a preallocated cache never grows while decoding
                        need = req.state.seen + len(req.feed) + req.params.max_new_tokens
                        req.state.reserve(min(need, req.window) if req.window is not None else need)
                    ids = torch.tensor([piece], dtype=torch.long, device=self.loaded.device)
                    logits = req.state.forward(ids)[0, -1, :]
                except Exception as exc:  # noqa: BLE001 - this request's failure (e.g. out of memory), not the others'
                    self._fail(req, exc)
                    continue
                req.prefilled += len(piece)
                budget -= len(piece)
                if req.prefilled == len(req.feed):
                    req.logits, req.t1 = logits, time.perf_counter()
        # 2. sample, emit, decide who goes on
        feeding = []
        ready = [r for r in running if r.logits is not None and not r.released.is_set()]
        for req, tok in zip(ready, _next_tokens(ready)):
            req.logits = None
            if req.released.is_set():  # failed with another row's pool since
                continue
            req.sampled += 1
            text = req.row.push(tok)
            if text:
                req.out.put(Delta(0, text))
            more = req.sampled < req.params.max_new_tokens and not (req.window is not None and req.seen + 1 > req.window)
            if req.row.done or not more:
                self._finish(req)
            else:
                req.pending = tok
                feeding.append(req)
        # 3. feed: pooled rows in one forward, the rest one forward each
        pool = self.pool
        rows = [r for r in feeding if pool is not None and pool.accepts(r.state)]
        for req in [r for r in feeding if r.pooled and r not in rows]:  # no longer taken (RCC: a window starts)
            try:
                self._leave_pool(req, keep=True)
            except Exception as exc:  # noqa: BLE001
                self._fail(req, exc)
        if len(rows) >= 2 or any(r.pooled for r in rows):  # a lone request decodes on its own state
            for req in rows:
                if not req.pooled:
                    self.pool.join(req, req.state)
                    req.pooled = True
            self._pool_step()
        alone = [r for r in feeding if not r.pooled and not r.released.is_set()]
        if len(alone) > 1 and pool is None and not self._serial_logged:
            self._serial_logged = True
            logger.info("batching: %r decodes one request per forward (its states do not pool)", self.strategy.name)
        for req in alone:
            try:
                req.logits = req.state.forward(torch.tensor([[req.pending]], device=self.loaded.device))[0, -1, :]
            except Exception as exc:  # noqa: BLE001
                self._fail(req, exc)
                continue
            if req.fed_tokens is not None:
                req.fed_tokens.append(req.pending)
            req.pending = None
            self.steps += 1

    def _pool_step(self) -> None:
        """One forward for every pool row (rows run in step: a row's request either feeds now or has left)."""
        owners = self.pool.owners
        tokens = [o.pending for o in owners]
        try:
            logits = self.pool.step(tokens)
        except Exception as exc:  # noqa: BLE001 - the pool's cache is unknown now: every row fails
            for o in list(owners):
                self._fail(o, exc)
            return
        for i, o in enumerate(list(owners)):
            o.logits = logits[i]
            o.gained.append(o.pending)
            o.pending = None
        self.steps += 1

    # ---- ending a request ------------------------------------------------------------------------------------------
    def _leave_pool(self, req: Request, keep: bool) -> None:
        """Take ``req``'s row out of the pool; ``keep``: its state goes on from where the row is (always when it
        leaves mid-reply; at the end only for a session's state)."""
        if not req.pooled:
            return
        self.pool.leave(req, req.state, len(req.gained), keep)
        req.pooled = False
        if keep and req.gained:
            if req.fed_tokens is not None:
                req.fed_tokens.extend(req.gained)
        req.gained = []

    def _release(self, req: Request) -> None:
        with self._cond:
            if req in self._running:
                self._running.remove(req)
            if req in self._waiting:
                self._waiting.remove(req)
        req.released.set()

    def _finish(self, req: Request) -> None:
        req.drop_unfed()
        try:
            self._leave_pool(req, keep=req.keep_state)
        except Exception as exc:  # noqa: BLE001
            self._fail(req, exc)
            return
        tail = req.row.close()
        if tail:
            req.out.put(Delta(0, tail))
        t2 = time.perf_counter()
        t1 = req.t1 or t2
        req.out.put(req.row.completion(req.prompt_tokens, t1 - req.t0, t2 - t1))
        self._release(req)

    def _fail(self, req: Request, exc: BaseException) -> None:
        req.drop_unfed()
        try:
            self._leave_pool(req, keep=False)
        except Exception:  # noqa: BLE001 - the error that matters is the first one
            # the pool's rows are unknown now: a fresh pool, and every other row fails too (never left waiting)
            self.pool = pool_for(self.strategy, self.loaded)
            with self._cond:
                orphans = [r for r in self._running if r.pooled and r is not req]
            for r in [req, *orphans]:
                r.pooled, r.gained = False, []
            for r in orphans:
                self._fail(r, exc)
        req.out.put(exc)
        self._release(req)


def _next_tokens(reqs: list[Request]) -> list[int]:
    """Each request's next token from its logits. The greedy rows' argmax runs as one batched call, read back
    once per step (per row it was a device sync each); sampled rows draw one by one from their own generators, so
    a seeded reply never depends on who else is running."""
    tokens: list[Optional[int]] = [None] * len(reqs)
    greedy = [i for i, r in enumerate(reqs) if r.params.temperature == 0.0]
    if len(greedy) > 1:
        best = torch.stack([reqs[i].logits.float() for i in greedy]).argmax(dim=-1).tolist()  # (exact in float32)
        for i, tok in zip(greedy, best):
            tokens[i] = tok
    for i, req in enumerate(reqs):
        if tokens[i] is None:
            tokens[i] = int(sample(req.logits[None], req.params, req.generator)[0])
    return tokens

