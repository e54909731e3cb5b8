"""StreamingLLM rows decoding together (continuous batching): each row equals its session decoding alone, through
filling, the first eviction, the sinks' re-rotation and the ring's rebase; leaving gives the session its ring back."""

import pytest
import torch

from longctx_llm import Engine
from longctx_streaming import StreamingStrategy
from longctx_streaming.pool import FixedRowRings, RingPool

# (arch, sink, window, prompt lengths): rows that start empty-ish, mid-fill, just full, long evicted
CASES = [("llama", 4, 12, (3, 9, 16, 40)), ("qwen2", 2, 10, (1, 12, 30)), ("gpt_neox", 4, 12, (5, 20)),
         ("llama", 0, 10, (4, 10, 25))]


# the bucketed rings (emulated graphs) for every case, the first one in the quick suite
GRAPH_CASES = [(*c, False) for c in CASES] + [
    pytest.param(*c, True, marks=() if i == 0 else pytest.mark.slow, id=f"graphs-{c[0]}-{i}") for i, c in enumerate(CASES)
]


@pytest.mark.parametrize("arch, sink, window, lengths, graphs", GRAPH_CASES)
def test_rows_decode_as_their_sessions_alone(tiny_model, request, arch, sink, window, lengths, graphs):
    if graphs:
        request.getfixturevalue("emulated")  # CUDA graphs emulated on CPU: the bucketed rings (FixedRowRings)
    model = tiny_model(arch, max_positions=256)
    strategy = StreamingStrategy(sink_tokens=sink, window=window, prefill_chunk_size=4)
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 200, (1, n), generator=gen) for n in lengths]
    alone = [strategy.new_state(model) for _ in prompts]
    rows = [strategy.new_state(model) for _ in prompts]
    for a, b, p in zip(alone, rows, prompts):
        a.forward(p)
        b.forward(p)
    pool = strategy.row_pool(model)
    owners = [object() for _ in prompts]
    # what a session's captured CUDA graphs read: the addresses of its buffers (and float32 sink pairs)
    addresses = [_addresses(s.cache) for s in rows]
    marker = object()
    for o, s in zip(owners, rows):
        assert pool.accepts(s)
        pool.join(o, s)
        s._graphs = marker
    steps = 3 * window  # every row evicts, and rebases (every `window` evicted tokens) at least once
    for t in range(steps):
        tokens = torch.randint(3, 200, (len(prompts),), generator=gen).tolist()
        expected = torch.cat([a.forward(torch.tensor([[tok]]))[:, -1] for a, tok in zip(alone, tokens)])
        torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-5, atol=1e-5)
    assert all(a.cache.evicted >= window for a in alone)
    assert isinstance(pool.rings, FixedRowRings) == graphs
    if graphs:  # every step after the first replayed the bucket's graph
        assert pool._runner.captured == 1 and pool.rings.size == 1 << (len(prompts) - 1).bit_length()
    # rows leave (the middle one first); each session's ring is then the one it would have had alone
    for i in (1, 0) + tuple(range(2, len(prompts))):
        pool.leave(owners[i], rows[i], steps, keep=True)
        a, b = alone[i], rows[i]
        assert (b.seen, b.cache.filled, b.cache.head, b.cache.base, b.cache.evicted) == (
            a.seen, a.cache.filled, a.cache.head, a.cache.base, a.cache.evicted)
        for ka, kb in zip(a.cache.keys, b.cache.keys):
            torch.testing.assert_close(kb, ka, rtol=1e-5, atol=1e-5)
        # the ring came back into the session's own tensors: its graphs stay valid and are kept
        assert _addresses(b.cache) == addresses[i] and b._graphs is marker
        b._graphs = None
        nxt = torch.tensor([[7]])
        torch.testing.assert_close(b.forward(nxt), a.forward(nxt), rtol=1e-5, atol=1e-5)
    assert len(pool) == 0 and pool.rings is None


def test_a_row_that_fails_leaves_its_session_as_it_was(tiny_model):
    model = tiny_model("llama", max_positions=256)
    strategy = StreamingStrategy(sink_tokens=4, window=12)
    state = strategy.new_state(model)
    state.forward(torch.randint(3, 200, (1, 20), generator=torch.Generator().manual_seed(0)))
    before = (state.seen, state.cache.head, state.cache.base, state.cache.keys[0].clone())
    pool = strategy.row_pool(model)
    pool.join("a", state)
    pool.join("b", _fed(strategy, model, 9))
    for _ in range(5):
        pool.step([5, 6])
    pool.leave("a", state, 5, keep=False)
    assert (state.seen, state.cache.head, state.cache.base) == before[:3]
    assert torch.equal(state.cache.keys[0], before[3])


def _fed(strategy, model, n):
    state = strategy.new_state(model)
    state.forward(torch.randint(3, 200, (1, n), generator=torch.Generator().manual_seed(n)))
    return state


def test_what_the_ring_pool_takes(tiny_model):
    model = tiny_model("llama", max_positions=256)
    ring = StreamingStrategy(sink_tokens=4, window=12)
    pool = ring.row_pool(model)
    assert isinstance(pool, RingPool)
    assert not pool.accepts(ring.new_state(model))  # nothing fed yet: nothing to pool
    assert pool.accepts(_fed(ring, model, 5))
    assert not pool.accepts(_fed(StreamingStrategy(sink_tokens=4, window=16), model, 5))  # another window
    assert StreamingStrategy(sink_tokens=4, window=12, layout="shift").row_pool(model) is None


@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "graphs"])
def test_concurrent_streaming_sessions_share_forwards(peaked_model, chat_runs, request, graphs):
    """Through the engine's scheduler: replies equal their serial runs and decode steps are shared."""
    if graphs:
        request.getfixturevalue("emulated")
    strategy = {"name": "streaming", "sink_tokens": 4, "window": 24, "prefill_chunk_size": 8}
    prompts = ["Name a colour.", "Tell me about the sea.", "Count to five.", "Hello!"]
    lm = peaked_model()
    serial = chat_runs.serial(Engine(lm, strategy=strategy, batching={"max_batch": 1}), prompts, turns=2, tokens=16)
    engine = Engine(lm, strategy=strategy, batching={"max_batch": 4, "max_batch_tokens": 32})
    assert chat_runs.concurrent(engine, prompts, turns=2, tokens=16) == serial
    assert engine.scheduler.steps < sum(len(v) - 1 for v in serial.values())
    assert engine.scheduler.pool.graphs == graphs  # the rows ran in the bucketed rings through the graph runner


def _addresses(cache):
    pairs = [t.data_ptr() for p in cache._sink_pairs if p is not None for t in p]
    return ([k.data_ptr() for k in cache.keys], [v.data_ptr() for v in cache.values],
            [sk.data_ptr() for sk in cache.sink_keys if sk is not None], pairs)


def test_a_ring_that_cannot_go_back_in_place_replaces_the_buffers_and_drops_the_graphs(tiny_model):
    model = tiny_model("llama", max_positions=256)
    strategy = StreamingStrategy(sink_tokens=4, window=12)
    state = _fed(strategy, model, 20)
    pool = strategy.row_pool(model)
    pool.join("a", state)
    pool.step([5])
    state._graphs = "captured"
    state.cache.keys[0] = state.cache.keys[0][:, :, :-1].clone()  # another shape: no copy in place
    pool.leave("a", state, 1, keep=True)
    assert state._graphs is None and state.cache.keys[0].shape[2] == state.cache.capacity
    alone = _fed(strategy, model, 20)
    alone.forward(torch.tensor([[5]]))
    torch.testing.assert_close(state.forward(torch.tensor([[9]])), alone.forward(torch.tensor([[9]])))


def test_bucketed_rows_join_and_leave_between_replayed_steps(tiny_model, emulated):
    """Rows join into free rows of the bucket and leave holes behind; the bucket grows past its size and shrinks at a
    quarter; every step each row equals its session alone."""
    model = tiny_model("llama", max_positions=256)
    strategy = StreamingStrategy(sink_tokens=2, window=10, prefill_chunk_size=4)
    gen = torch.Generator().manual_seed(11)
    alone, rows, live = {}, {}, []
    pool = strategy.row_pool(model)
    sizes = set()

    def add(name, n):
        p = torch.randint(3, 200, (1, n), generator=gen)
        alone[name], rows[name] = strategy.new_state(model), strategy.new_state(model)
        alone[name].forward(p)
        rows[name].forward(p)
        pool.join(name, rows[name])
        live.append(name)

    def leave(name):
        pool.leave(name, rows[name], gained[name], keep=True)
        a, b = alone[name], rows[name]
        assert (b.seen, b.cache.filled, b.cache.head, b.cache.base) == (a.seen, a.cache.filled, a.cache.head, a.cache.base)
        live.remove(name)

    gained = {}
    plan = [("add", "a", 3), ("add", "b", 15), ("step", 4), ("add", "c", 8), ("step", 3), ("leave", "a"),
            ("add", "d", 1), ("add", "e", 30), ("step", 12), ("leave", "b"), ("leave", "e"), ("leave", "d"),
            ("step", 5), ("add", "f", 6), ("step", 3)]
    for op in plan:
        if op[0] == "add":
            add(op[1], op[2])
            gained[op[1]] = 0
        elif op[0] == "leave":
            leave(op[1])
        else:
            for _ in range(op[1]):
                tokens = torch.randint(3, 200, (len(live),), generator=gen).tolist()
                order = list(pool.owners)
                expected = torch.cat([alone[o].forward(torch.tensor([[t]]))[:, -1] for o, t in zip(order, tokens)])
                torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-5, atol=1e-5)
                for o in order:
                    gained[o] += 1
                sizes.add(pool.rings.size)
    assert sizes == {1, 2, 4}  # grew from 2 to 4 rows, shrank to 1 when a quarter was left, grew again
    for name in list(live):
        leave(name)
    assert pool.rings is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_graphs_of_the_ring_pool_equal_each_session_alone(tiny_model):
    model = tiny_model("llama", max_positions=256, device="cuda")
    strategy = StreamingStrategy(sink_tokens=4, window=12, prefill_chunk_size=4)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(3, 200, (1, n), generator=gen).cuda() for n in (3, 9, 16, 40)]
    alone = [strategy.new_state(model) for _ in prompts]
    rows = [strategy.new_state(model) for _ in prompts]
    pool = strategy.row_pool(model)
    for i, (a, b, p) in enumerate(zip(alone, rows, prompts)):
        a.forward(p)
        b.forward(p)
        pool.join(i, b)
    for _ in range(30):
        tokens = torch.randint(3, 200, (len(prompts),), generator=gen).tolist()
        expected = torch.cat([a.forward(torch.tensor([[t]]).cuda())[:, -1] for a, t in zip(alone, tokens)])
        torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-4, atol=1e-4)
    assert isinstance(pool.rings, FixedRowRings) and pool._runner.captured == 1
