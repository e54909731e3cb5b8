"""The async bridge (``longctx_llm.runtime.aio``): every concurrent call runs at once, however many there are, so
concurrent requests can meet in the engine's batch; results, errors and early stops cross back intact."""

from __future__ import annotations

import asyncio
import contextvars
import os
import threading

import pytest

from longctx_llm.runtime import aio

#: more calls at once than the loop's default executor has workers (cpu_count + 4, at most 32)
MANY = min(32, (os.cpu_count() or 1) + 4) + 3


def test_more_concurrent_streams_than_executor_workers_all_run_at_once():
    barrier = threading.Barrier(MANY, timeout=20)  # broken (an error) unless all producers run together

    def tokens(i):
        barrier.wait()
        yield from (f"{i}-a", f"{i}-b")

    async def consume(i):
        return [t async for t in aio.aiter_sync(lambda: tokens(i))]

    async def main():
        return await asyncio.gather(*(consume(i) for i in range(MANY)))

    assert asyncio.run(main()) == [[f"{i}-a", f"{i}-b"] for i in range(MANY)]


def test_more_concurrent_calls_than_executor_workers_all_run_at_once():
    barrier = threading.Barrier(MANY, timeout=20)

    async def main():
        return await asyncio.gather(*(aio.run_sync(lambda i=i: (barrier.wait(), i)[1]) for i in range(MANY)))

    assert asyncio.run(main()) == list(range(MANY))


def test_errors_and_context_variables_cross_to_the_caller():
    var = contextvars.ContextVar("var", default="unset")

    def boom():
        raise ValueError(f"bad {var.get()}")

    async def main():
        var.set("request-7")
        with pytest.raises(ValueError, match="bad request-7"):
            await aio.run_sync(boom)
        return await aio.run_sync(var.get)

    assert asyncio.run(main()) == "request-7"


def test_an_early_stop_closes_the_producer_in_its_thread():
    closed = threading.Event()

    def endless():
        try:
            while True:
                yield "x"
        finally:
            closed.set()

    async def main():
        async for _ in aio.aiter_sync(endless):
            break

    asyncio.run(main())
    assert closed.wait(5)


def test_a_call_that_raises_stop_iteration_is_an_error_not_a_hang():
    async def main():
        with pytest.raises(RuntimeError, match="StopIteration"):
            await asyncio.wait_for(aio.run_sync(next, iter([])), 10)

    asyncio.run(main())


def test_a_cancelled_caller_is_seen_as_given_up_by_its_worker():
    """``run_sync``'s worker can tell that its awaiting task was cancelled (the scheduler then drops its reply)."""
    seen = {}
    started = threading.Event()

    def work():
        event = aio.given_up()
        seen["event"] = event
        started.set()
        return event.wait(10)

    async def main():
        task = asyncio.ensure_future(aio.run_sync(work))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        assert seen["event"].wait(10)

    asyncio.run(main())
    assert aio.given_up() is None  # outside a worker thread
