"""Async faces of the synchronous engine that never block the event loop.

Model work runs in a worker thread; text deltas cross back through an ``asyncio.Queue``. Each integration
(LangChain ``_astream``, LlamaIndex ``astream_chat``...) uses these two functions instead of its own bridge.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator, Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()


async def run_sync(fn: Callable[..., T], *args, **kwargs) -> T:
    """Run a blocking call in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def aiter_sync(make_iter: Callable[[], Iterator[T]]) -> AsyncIterator[T]:
    """Iterate a blocking iterator (created in the worker thread) without blocking the loop.

    If the consumer stops early, the producer is told to stop and its iterator is closed in its own thread.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()

    def produce() -> None:
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

    worker = loop.run_in_executor(None, produce)
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
