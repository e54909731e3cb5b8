"""Continuous batching: concurrent sessions' greedy replies equal their serial runs token for token, for every
strategy; rows join and leave between steps; a reader that stops early frees its row; a full queue says so."""

from __future__ import annotations

import threading
import types

import pytest
import torch

from longctx_llm import Engine
from longctx_llm.errors import BusyError

PROMPTS = ["Name a colour.", "Tell me about the sea and the ships on it.", "Count to five.", "Hello!",
           "Write one line about autumn leaves.", "What is two plus two?"]

STRATEGIES = {
    "full": {"name": "full"},
    "dca": {"name": "dca", "chunk_size": 24, "local_window": 6},
    "streaming": {"name": "streaming", "sink_tokens": 4, "window": 48, "prefill_chunk_size": 16},
}


@pytest.fixture
def peaked(peaked_model):
    return peaked_model()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_concurrent_sessions_equal_their_serial_runs(peaked, chat_runs, name):
    strategy = STRATEGIES[name]
    serial = chat_runs.serial(Engine(peaked, strategy=strategy, batching={"max_batch": 1}), PROMPTS, turns=2, tokens=12)
    engine = Engine(peaked, strategy=strategy, batching={"max_batch": 4, "max_batch_tokens": 32})
    batched = chat_runs.concurrent(engine, PROMPTS, turns=2, tokens=12)
    assert batched == serial
    alone = sum(len(v) - 1 for v in serial.values())  # decode forwards one request at a time would take
    # rows shared them (how many join each step depends on thread timing: at least some forwards were shared)
    assert engine.scheduler.steps < alone


def test_greedy_and_seeded_sampled_rows_in_one_batch_equal_their_serial_runs(peaked, monkeypatch):
    """Greedy rows take their tokens from one batched argmax; sampled rows draw from their own seeded generators:
    each reply is its request's reply alone, whoever shares its steps."""
    from longctx_llm.runtime import batching

    mixed = []  # steps whose rows were greedy and sampled at once
    real = batching._next_tokens

    def spy(reqs):
        kinds = {r.params.temperature == 0.0 for r in reqs}
        if len(kinds) == 2 and sum(r.params.temperature == 0.0 for r in reqs) > 1:
            mixed.append(len(reqs))
        return real(reqs)

    monkeypatch.setattr(batching, "_next_tokens", spy)
    def ask(engine, i):
        sampled = i % 2 == 1
        return engine.complete(PROMPTS[i], max_new_tokens=10, temperature=0.9 if sampled else 0.0,
                               top_k=20 if sampled else 0, seed=100 + i if sampled else None).token_ids

    alone = Engine(peaked, batching={"max_batch": 1})
    serial = [ask(alone, i) for i in range(len(PROMPTS))]
    engine = Engine(peaked, batching={"max_batch": 6})
    out = [None] * len(PROMPTS)
    barrier = threading.Barrier(len(PROMPTS))

    def run(i):
        barrier.wait()
        out[i] = ask(engine, i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == serial
    assert mixed  # some steps sampled several greedy rows together beside sampled ones


def test_a_reader_that_stops_early_frees_its_row_and_the_session_goes_on(peaked):
    engine = Engine(peaked, batching={"max_batch": 4})
    serial = Engine(peaked, batching={"max_batch": 1})
    stream = engine.stream_chat("Tell me about the sea.", session_id="a", max_new_tokens=20)
    other = engine.stream_chat("Count to five.", session_id="b", max_new_tokens=20)
    next(stream)
    stream.close()  # the row of "a" goes at the next step; "b" runs on
    assert other.text() == serial.chat("Count to five.", session_id="b", max_new_tokens=20).text
    # the closed session's cache still matches its record: the next turn continues from what was fed
    a = engine.session("a")
    assert a.state.seen == len(a.cached_ids)
    assert engine.chat("Hello", session_id="a", max_new_tokens=4).completion_tokens >= 1


def test_a_full_queue_refuses_with_busy_error(peaked):
    engine = Engine(peaked, batching={"max_batch": 1, "max_queue": 0})
    assert engine.scheduler is None  # max_batch 1: no scheduler
    engine = Engine(peaked, batching={"max_batch": 2, "max_queue": 0, "when_full": "refuse"})
    streams = [engine.stream(f"Prompt {i}", max_new_tokens=30) for i in range(2)]
    with pytest.raises(BusyError, match="max_batch 2"):
        engine.stream("one more", max_new_tokens=4)
    for s in streams:
        s.close()


def test_beyond_a_full_queue_callers_wait_for_room_by_default(peaked):
    """In-process (LangChain ``abatch`` of many inputs, threads): a request beyond ``max_batch + max_queue`` waits
    and then runs; its reply is the one it gets alone."""
    alone = Engine(peaked, batching={"max_batch": 1})
    expected = [alone.complete(p, max_new_tokens=8, temperature=0).text for p in PROMPTS]
    engine = Engine(peaked, batching={"max_batch": 2, "max_queue": 1})
    assert engine.batching.when_full == "wait"
    out: dict = {}
    threads = [threading.Thread(target=lambda i=i: out.setdefault(i, engine.complete(PROMPTS[i], max_new_tokens=8,
                                                                                      temperature=0).text))
               for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [out.get(i) for i in range(len(PROMPTS))] == expected


def test_a_request_closed_while_it_waits_in_line_leaves_the_line(peaked):
    """A reader that gives up before its request's turn (what ``_deltas`` does when its stream is closed) frees its
    place: the scheduler drops it at its next look at the line and releases it, nothing fed."""
    engine = Engine(peaked, batching={"max_batch": 2, "max_queue": 0})
    sched = engine.scheduler
    with sched._cond:  # the scheduler's thread cannot admit anyone while we hold its lock
        streams = [engine.stream(f"Prompt {i}", max_new_tokens=30) for i in range(3)]
        assert len(sched._waiting) == 3  # the third is beyond max_batch + max_queue: in line, no error
        late = sched._waiting[-1]
        late.cancelled = True
        sched._cond.notify()
    assert late.released.wait(30)
    assert late.prefilled == 0 and late not in sched._running
    for s in streams[:2]:
        s.close()
    alone = Engine(peaked, batching={"max_batch": 1}).complete("After", max_new_tokens=4, temperature=0).text
    assert engine.complete("After", max_new_tokens=4, temperature=0).text == alone


def test_a_server_refuses_instead_of_waiting(peaked):
    engine = Engine(peaked, batching={"max_batch": 2, "max_queue": 0})
    streams = [engine.stream(f"Prompt {i}", max_new_tokens=30) for i in range(2)]
    engine.refuse_when_full()  # what longctx serve's app does, here with replies already running
    with pytest.raises(BusyError, match="max_queue 0"):
        engine.stream("one more", max_new_tokens=4)
    for s in streams:
        s.close()


def test_bad_batching_options_are_config_errors(peaked):
    from longctx_llm.errors import ConfigError

    with pytest.raises(ConfigError, match="batching.max_batch"):
        Engine(peaked, batching={"max_batch": 0})
    with pytest.raises(ConfigError, match="batching.max_batch_tokens"):
        Engine(peaked, batching={"max_batch_tokens": -1})



def test_prompt_pieces_keep_a_sliding_windows_boundaries(tiny_model):
    """StreamingLLM evicts between its own prefill pieces, so where a prompt is cut changes what its tokens saw: the
    scheduler cuts at multiples of the state's ``prefill_align`` whatever ``max_batch_tokens`` is, and the state then
    equals the one fed the whole prompt at once."""
    from longctx_llm.runtime.batching import _piece_length

    model = tiny_model()
    strategy = Engine(model, strategy=STRATEGIES["streaming"]).strategy
    ids = torch.randint(3, 200, (1, 70), generator=torch.Generator().manual_seed(0))

    def fed_in_pieces(budget, align):
        state = strategy.new_state(model, 1)
        state.prefill_align = align
        req = types.SimpleNamespace(feed=ids[0].tolist(), prefilled=0, state=state)
        while req.prefilled < ids.shape[1]:
            n = _piece_length(req, budget)
            logits = state.forward(ids[:, req.prefilled : req.prefilled + n])[0, -1]
            req.prefilled += n
        return logits

    whole = strategy.new_state(model, 1).forward(ids)[0, -1]
    assert strategy.new_state(model, 1).prefill_align == 16
    torch.testing.assert_close(fed_in_pieces(20, 16), whole)
    torch.testing.assert_close(fed_in_pieces(7, 16), whole)  # a budget under one piece still moves a whole piece
    assert not torch.allclose(fed_in_pieces(20, None), whole)  # cut anywhere, the window would hold other values


def test_an_async_caller_that_gives_up_leaves_the_line_at_the_next_step(peaked):
    """An async stream (LangChain ``astream``, the server) given up while its request waits behind running ones: the
    request leaves the line at the scheduler's next step, not once a row frees and it is admitted (its reader thread,
    blocked waiting for a first token, is told through ``aio.given_up``)."""
    import asyncio

    from longctx_llm.runtime import aio

    engine = Engine(peaked, batching={"max_batch": 2, "max_queue": 4})
    sched = engine.scheduler
    permits = threading.Semaphore(0)
    step = sched._iteration

    def gated(running):  # the scheduler runs one step per permit
        permits.acquire()
        step(running)

    sched._iteration = gated

    async def main():
        with sched._cond:  # both in line before the scheduler's thread looks: it admits them together
            running = [engine.stream(f"Prompt {i}", max_new_tokens=40, temperature=0) for i in range(2)]
        reader = aio.aiter_sync(lambda: iter(engine.stream("Count to five.", max_new_tokens=8, temperature=0)))
        pending = asyncio.ensure_future(reader.__anext__())
        try:
            for _ in range(3000):
                if sched.waiting == 1 and sched.running == 2:
                    break
                await asyncio.sleep(0.01)
            assert sched.waiting == 1 and sched.running == 2
            pending.cancel()  # the consumer stops waiting: the generator's cleanup tells the worker
            steps = 0
            while not pending.done() and steps < 3:  # a few steps, far fewer than the 40 tokens of the running ones
                permits.release()
                steps += 1
                for _ in range(3000):  # (a wait for the step to run, not a timing: 30 s on a loaded machine)
                    await asyncio.sleep(0.01)
                    if pending.done() or sched.waiting == 0:
                        break
            for _ in range(3000):
                if pending.done():
                    break
                await asyncio.sleep(0.01)
            assert pending.done() and sched.waiting == 0
            assert sched.running == 2  # the running replies go on
        finally:  # never leave the scheduler gated (a failure here must fail, not hang)
            sched._iteration = step
            for _ in range(100):
                permits.release()
            for s in running:
                s.close()

    asyncio.run(main())


def test_a_row_that_fails_to_leave_fails_the_others_instead_of_stranding_them(peaked, monkeypatch):
    """If giving a row's entries back fails (out of memory), the pool's rows are unknown: every request in it ends
    with the error (none waits forever) and the scheduler goes on with a fresh pool."""
    from longctx_llm.runtime import batch_pool

    real, calls = batch_pool.append_entries, []

    def fails_once(state, entries):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("simulated out of memory")
        return real(state, entries)

    monkeypatch.setattr(batch_pool, "append_entries", fails_once)
    engine = Engine(peaked, batching={"max_batch": 4})
    out = {}

    def chat(i):
        try:
            out[i] = engine.chat(PROMPTS[i], session_id=str(i), max_new_tokens=6 + 4 * i, temperature=0).text
        except RuntimeError as e:
            out[i] = e

    threads = [threading.Thread(target=chat, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads) and len(out) == 3
    assert any(isinstance(v, RuntimeError) for v in out.values())
    assert engine.scheduler.running == 0
    alone = Engine(peaked, batching={"max_batch": 1}).complete("After", max_new_tokens=4, temperature=0).text
    assert engine.complete("After", max_new_tokens=4, temperature=0).text == alone


def test_a_static_cache_takes_its_pooled_reply_in_place_and_keeps_its_graphs(tiny_model):
    """A session on the preallocated cache (the GPU default) gets its pooled reply's entries into its own buffers:
    its captured CUDA graphs stay valid (no re-capture after every pooled reply), and it goes on as if alone."""
    from longctx_llm.builtins.full import FullStrategy
    from longctx_llm.runtime.batch_pool import KVPool

    model = tiny_model("llama", max_positions=256)
    strategy = FullStrategy(static_cache=True)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (1, n), generator=gen) for n in (7, 12)]
    alone, rows = [strategy.new_state(model) for _ in prompts], [strategy.new_state(model) for _ in prompts]
    for a, b, p in zip(alone, rows, prompts):
        a.forward(p)
        b.forward(p)
    session = rows[0]
    buffers = [k.data_ptr() for k in session.cache.keys]
    generation, marker = session.cache.generation, object()
    pool = KVPool(strategy, model)
    for i, s in enumerate(rows):
        pool.join(i, s)
    session._graphs = marker
    for _ in range(5):
        tokens = torch.randint(3, 200, (2,), generator=gen).tolist()
        expected = torch.cat([a.forward(torch.tensor([[t]]))[:, -1] for a, t in zip(alone, tokens)])
        torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-5, atol=1e-5)
    pool.leave(0, session, 5, keep=True)
    assert session._graphs is marker and session.cache.generation == generation
    assert [k.data_ptr() for k in session.cache.keys] == buffers and session.seen == alone[0].seen
    nxt = torch.tensor([[11]])
    torch.testing.assert_close(session.forward(nxt), alone[0].forward(nxt), rtol=1e-5, atol=1e-5)


def test_a_static_cache_that_must_grow_for_its_pooled_reply_says_so(tiny_model):
    """Entries past the preallocated capacity grow the session's cache: its generation moves (the fast path then
    re-captures its graphs) and it goes on as if alone."""
    from longctx_llm.builtins.full import FullStrategy
    from longctx_llm.kernels.kv_cache import GRANULE
    from longctx_llm.runtime.batch_pool import KVPool

    model = tiny_model("llama", max_positions=2 * GRANULE)
    strategy = FullStrategy(static_cache=True)
    prompt = torch.randint(3, 200, (1, GRANULE - 2), generator=torch.Generator().manual_seed(3))
    alone, session = strategy.new_state(model), strategy.new_state(model)
    alone.forward(prompt)
    session.forward(prompt)
    generation = session.cache.generation
    pool = KVPool(strategy, model)
    pool.join("a", session)
    for t in range(5):
        expected = alone.forward(torch.tensor([[t + 3]]))[:, -1]
        torch.testing.assert_close(pool.step([t + 3]), expected, rtol=1e-5, atol=1e-5)
    pool.leave("a", session, 5, keep=True)
    assert session.cache.generation > generation and session.cache.capacity >= GRANULE + 3
    nxt = torch.tensor([[11]])
    torch.testing.assert_close(session.forward(nxt), alone.forward(nxt), rtol=1e-5, atol=1e-5)


def test_a_full_pool_decodes_through_the_step_a_cuda_graph_replays(tiny_model, monkeypatch):
    """With graphs on (the CUDA default), a pool's steps are the fixed decode step that ``GraphRunner`` captures and
    replays, one key per pool state (on CPU no capture is possible: it is recorded, and the step runs eagerly)."""
    from longctx_llm.builtins.full import FullStrategy
    from longctx_llm.kernels.cuda_graphs import GraphRunner
    from longctx_llm.runtime.batch_pool import KVPool

    model = tiny_model("llama", max_positions=256)
    strategy = FullStrategy(static_cache=True)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 200, (1, n), generator=gen) for n in (4, 9)]
    alone, rows = [strategy.new_state(model) for _ in prompts], [strategy.new_state(model) for _ in prompts]
    pool = KVPool(strategy, model)
    for i, (a, b, p) in enumerate(zip(alone, rows, prompts)):
        a.forward(p)
        b.forward(p)
        pool.join(i, b)
    captures = []
    monkeypatch.setattr(GraphRunner, "_capture", lambda self, key, inputs, forward: captures.append(key))
    pool.state.cuda_graphs = True
    for _ in range(3):
        tokens = torch.randint(3, 200, (2,), generator=gen).tolist()
        expected = torch.cat([a.forward(torch.tensor([[t]]))[:, -1] for a, t in zip(alone, tokens)])
        torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-5, atol=1e-5)
    runner = pool.state._graphs
    assert isinstance(runner, GraphRunner) and runner.owner is pool.state.cache
    assert captures == [("decode", False)] * 2  # the first step runs eagerly, the next ones would replay


@pytest.mark.parametrize("name", ["full", "dca"])
def test_a_bucketed_pool_keeps_its_state_and_graphs_across_joins_and_leaves(tiny_model, monkeypatch, name):
    """Where steps replay CUDA graphs, the pool holds a power of two rows: a row joins into a free slot (a longer
    one shifts every row right, in the same buffers) and leaves a hole, so the pool's cache, its generation and its
    graph runner stay; every row's logits still equal its session's alone. Outgrowing the bucket rebuilds."""
    from longctx_llm.kernels.cuda_graphs import GraphRunner
    from longctx_llm import registry
    from longctx_llm.runtime.batch_pool import KVPool

    model = tiny_model("llama", max_positions=256)
    options = {k: v for k, v in STRATEGIES[name].items() if k != "name"}
    strategy = registry.get("strategy", name)(static_cache=True, **options)
    gen = torch.Generator().manual_seed(7)
    alone, rows = {}, {}

    def start(owner, n):
        p = torch.randint(3, 200, (1, n), generator=gen)
        alone[owner], rows[owner] = strategy.new_state(model), strategy.new_state(model)
        alone[owner].forward(p)
        rows[owner].forward(p)

    def steps(pool, k):
        for _ in range(k):
            tokens = torch.randint(3, 200, (len(pool),), generator=gen).tolist()
            expected = torch.cat([alone[o].forward(torch.tensor([[t]]))[:, -1] for o, t in zip(pool.owners, tokens)])
            torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-5, atol=1e-5)

    monkeypatch.setattr(GraphRunner, "_capture", lambda self, key, inputs, forward: None)
    pool = KVPool(strategy, model, buckets=True)
    gained = {}
    for owner, n in (("a", 5), ("b", 9), ("c", 3)):
        start(owner, n)
        pool.join(owner, rows[owner])
    assert pool.capacity == 4
    pool.state.cuda_graphs = True
    steps(pool, 3)
    state, cache, runner = pool.state, pool.state.cache, pool.state._graphs
    generation = cache.generation
    assert isinstance(runner, GraphRunner)
    pool.leave("b", rows["b"], 3, keep=True)  # the longest row goes: every row shifts left, a hole stays
    steps(pool, 2)
    start("d", 30)  # longer than the pool: every row shifts right
    pool.join("d", rows["d"])
    start("e", 2)
    pool.join("e", rows["e"])
    assert pool.capacity == 4 and pool.owners == ["a", "d", "c", "e"]  # "d" took the hole "b" left
    steps(pool, 3)
    assert pool.state is state and pool.state.cache is cache and cache.generation == generation
    assert pool.state._graphs is runner
    start("f", 4)
    pool.join("f", rows["f"])  # a fifth row: the next bucket, new buffers
    assert pool.capacity == 8 and pool.state is not state
    steps(pool, 2)
    for owner in list(pool.owners):
        pool.leave(owner, rows[owner], 0, keep=False)
    assert pool.state is None and not pool.slots


@pytest.mark.parametrize("name", ["full", "dca"])
def test_concurrent_sessions_in_a_bucketed_pool_equal_their_serial_runs(peaked, chat_runs, monkeypatch, name):
    """The scheduler over a pool with free slots (the CUDA layout, forced here on CPU): same replies as alone."""
    from longctx_llm.runtime.batch_pool import KVPool

    strategy = STRATEGIES[name]
    serial = chat_runs.serial(Engine(peaked, strategy=strategy, batching={"max_batch": 1}), PROMPTS, turns=2, tokens=12)
    monkeypatch.setattr(KVPool, "_bucketed", lambda self: True)
    engine = Engine(peaked, strategy=strategy, batching={"max_batch": 3, "max_batch_tokens": 32})
    assert chat_runs.concurrent(engine, PROMPTS, turns=2, tokens=12) == serial


@pytest.mark.parametrize("rope", ["default", "dynamic"])
def test_a_free_slot_stays_at_position_zero(tiny_model, rope):
    """A slot no row fills feeds a dummy token every step; its position must not climb past the rows' (a RoPE
    rescaled by the batch's largest position, transformers' "dynamic", would change every row's logits)."""
    from longctx_llm import registry
    from longctx_llm.runtime.batch_pool import KVPool

    params = {"rope_type": rope, "rope_theta": 10000.0, **({"factor": 2.0} if rope == "dynamic" else {})}
    model = tiny_model("llama", max_positions=64, rope_parameters=params)
    strategy = registry.get("strategy", "full")(static_cache=True)
    gen = torch.Generator().manual_seed(0)
    alone, rows, gained, order = {}, {}, {}, []
    pool = KVPool(strategy, model, buckets=True)

    def start(o):
        p = torch.randint(3, 200, (1, 5), generator=gen)
        alone[o], rows[o] = strategy.new_state(model), strategy.new_state(model)
        alone[o].forward(p)
        rows[o].forward(p)
        pool.join(o, rows[o])
        gained[o] = 0
        order.append(o)

    for o in "abc":
        start(o)
    assert pool.capacity == 4  # slot 3 free from here on
    worst, n = 0.0, 0
    for it in range(120):  # rows churn (each lives < 45 steps, positions < 64); slot 3 is never filled
        if it % 12 == 11:
            o = order.pop(0)
            pool.leave(o, rows[o], gained[o], keep=False)
            del alone[o], rows[o], gained[o]
            n += 1
            start(f"x{n}")
        tokens = torch.randint(3, 200, (len(pool),), generator=gen).tolist()
        exp = torch.cat([alone[o].forward(torch.tensor([[t]]))[:, -1] for o, t in zip(pool.owners, tokens)])
        got = pool.step(tokens)
        for o in pool.owners:
            gained[o] += 1
        worst = max(worst, (got - exp).abs().max().item())
    assert pool.state.real_tokens[3].item() == 0
    assert max(alone[o].real_tokens.item() for o in pool.owners) < 64
    assert worst < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["full", "dca"])
def test_random_joins_steps_and_leaves_of_a_bucketed_pool_equal_each_session_alone(name):
    """benchmarks/pool_fuzz.py on CPU: holes, shifts both ways, bucket changes, leaves that keep or drop the reply."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "pool_fuzz.py"
    spec = importlib.util.spec_from_file_location("pool_fuzz", path)
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    model = fuzz.tiny_llama("cpu")
    assert fuzz.fuzz(model, name, 0, ops=80) < 1e-4
