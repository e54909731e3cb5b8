"""Async faces of the synchronous engine that never block the event loop.

Model work runs in a worker thread; text deltas cross back through an ``asyncio.Queue``. Each integration
(LangChain ``_astream``, LlamaIndex ``astream_chat``...) uses these two functions instead of its own bridge.

Each call gets a thread of its own, not one of the loop's default executor: that pool has ``cpu_count + 4`` workers
(6 on a 2-core machine), and a call holds its worker for a whole reply, so the seventh concurrent request would wait
for the first to finish instead of joining the engine's running batch (continuous batching).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import AsyncIterator, Callable, Iterator, Optional, TypeVar

T = TypeVar("T")
_DONE = object()

#: set in a worker thread of :func:`run_sync` / :func:`aiter_sync`: an event its awaiting coroutine sets when it
#: stops waiting (cancelled, or an async iterator closed early), so work queued for it can be dropped at once
_GIVEN_UP: "contextvars.ContextVar[Optional[threading.Event]]" = contextvars.ContextVar("longctx_given_up",
                                                                                         default=None)


def given_up() -> Optional[threading.Event]:
    """The event the awaiting coroutine of this worker thread sets when it stops waiting (None outside one).

    The batching scheduler keeps it with a request: a request whose caller gave up leaves the line (or its row) at
    the scheduler's next step, even while its reader thread is blocked waiting for its first token."""
    return _GIVEN_UP.get()


def _in_thread(fn: Callable[[], T]) -> "asyncio.Future[T]":
    """Start ``fn`` in a new thread (with the caller's context variables, as ``asyncio.to_thread``); a future of the
    running loop gets its result or its error. Not a daemon: like the executor's workers, the interpreter waits for it
    at exit instead of killing it inside a forward."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    context = contextvars.copy_context()

    def settle(value, error) -> None:
        if future.done():
            return
        if isinstance(error, StopIteration):  # a future cannot hold one (asyncio raises TypeError)
            error = RuntimeError(f"{getattr(fn, '__name__', 'the call')} raised StopIteration")
        future.set_exception(error) if error is not None else future.set_result(value)

    def work() -> None:
        value, error = None, None
        try:
            value = context.run(fn)
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            error = e
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name="longctx-aio").start()
    return future


async def run_sync(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run a blocking call in a worker thread of its own; if the awaiting task is cancelled, :func:`given_up` tells
    the call (a queued reply is dropped, a running one stops at the next step)."""
    gave_up = threading.Event()

    def call() -> T:
        _GIVEN_UP.set(gave_up)
        return fn(*args, **kwargs)

    try:
        return await _in_thread(call)
    except asyncio.CancelledError:
        gave_up.set()
        raise


async def aiter_sync(make_iter: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate a blocking iterator (created in the worker thread) without blocking the loop.

    If the consumer stops early, the producer is told to stop (:func:`given_up`) and its iterator is closed in its own
    thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
        _GIVEN_UP.set(stop)  # the consumer sets it when it stops: a reply still in line leaves it at once
        it = None
        try:
            it = make_iter()
            for item in it:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, item)
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            loop.call_soon_threadsafe(queue.put_nowait, e)
        finally:
            close = getattr(it, "close", None)
            if stop.is_set() and close is not None:
                close()

    worker = _in_thread(produce)
    try:
        while True:
            item = await queue.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        await asyncio.shield(worker)
