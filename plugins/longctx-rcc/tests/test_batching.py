"""RCC under the batch scheduler: replies decode together on their decoders (slots and raw text), the compressor's
reader LoRA only on rows that hold slots; a token that starts a window leaves the pool, compresses, and joins again.
Concurrent sessions get exactly their serial replies."""

import pytest
import torch

from longctx_llm import Engine
from longctx_llm.model import adapters as files
from longctx_rcc.pool import RCCPool
from longctx_rcc.strategy import RCCStrategy
from rcc_helpers import random_compressor, state

PROMPTS = ["Tell me about the sea and the ships on it, please.", "Count to five.", "Hello!"]


def _strategy(tiny, tmp_path, raw_tail=0):
    comp = random_compressor(tiny, ratio=4, window=16)
    comp.save(tmp_path / "c", {"base_model": {"name": "tiny", **files.model_facts(tiny.model)}}, dtype=torch.float32)
    return {"name": "rcc", "ratio": 4, "window": 16, "compressor": str(tmp_path / "c"), "raw_tail": raw_tail}


@pytest.mark.parametrize("raw_tail", [0, 5])
def test_rcc_sessions_under_the_scheduler_equal_serial(peaked_model, chat_runs, tmp_path, raw_tail):
    tiny = peaked_model()
    strategy = _strategy(tiny, tmp_path, raw_tail)
    serial = chat_runs.serial(Engine(tiny, strategy=strategy, batching={"max_batch": 1}), PROMPTS, turns=2, tokens=12)
    engine = Engine(tiny, strategy=strategy, batching={"max_batch": 4})
    assert chat_runs.concurrent(engine, PROMPTS, turns=2, tokens=12) == serial
    assert engine.scheduler.steps < sum(len(v) - 1 for v in serial.values())  # rows shared forwards


def test_rows_with_and_without_slots_decode_as_alone(peaked_model, tmp_path):
    tiny = peaked_model()
    options = {k: v for k, v in _strategy(tiny, tmp_path).items() if k != "name"}
    strategy = RCCStrategy(**options)
    comp = strategy.compressor_for(tiny)
    gen = torch.Generator().manual_seed(3)
    lengths = (5, 20, 37)  # no slot yet; one window compressed; two
    prompts = [torch.randint(3, 200, (1, n), generator=gen) for n in lengths]
    alone, rows = [state(tiny, comp) for _ in prompts], [state(tiny, comp) for _ in prompts]
    for a, b, p in zip(alone, rows, prompts):
        a.forward(p)
        b.forward(p)
    assert [s.windows for s in rows] == [0, 1, 2]
    pool = strategy.row_pool(tiny)
    assert isinstance(pool, RCCPool)
    assert not pool.accepts(state(tiny, random_compressor(tiny, seed=1)))  # another compressor's reader
    owners = [object() for _ in prompts]
    for o, s in zip(owners, rows):
        assert pool.accepts(s)
        pool.join(o, s)
    for _ in range(10):  # the first row reaches 15 tokens: the next one would start a window
        tokens = torch.randint(3, 200, (3,), generator=gen).tolist()
        expected = torch.cat([a.forward(torch.tensor([[t]]))[:, -1] for a, t in zip(alone, tokens)])
        torch.testing.assert_close(pool.step(tokens), expected, rtol=1e-5, atol=1e-5)
    assert pool.accepts(rows[0])
    pool.step([4, 5, 6])
    for a, t in zip(alone, [4, 5, 6]):
        a.forward(torch.tensor([[t]]))
    assert not pool.accepts(rows[0])  # 16 tokens: its next token starts the second window
    for o, b, a in zip(owners, rows, alone):
        pool.leave(o, b, 11, keep=True)
        assert (b.text, b.seen, b.windows, b.decoder.seen) == (a.text, a.seen, a.windows, a.decoder.seen)
        nxt = torch.tensor([[9]])
        torch.testing.assert_close(b.forward(nxt), a.forward(nxt), rtol=1e-5, atol=1e-5)
    assert rows[0].windows == 1  # fed alone, the row compressed its first window


@pytest.mark.parametrize("raw_tail", [0, 5])
def test_completions_that_cross_a_window_equal_serial(peaked_model, tmp_path, raw_tail):
    """Stateless completions (their states are thrown away at the end) still bring their state up to date when a row
    leaves mid-reply to start a window."""
    import threading

    tiny = peaked_model()
    strategy = _strategy(tiny, tmp_path, raw_tail)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (n,), generator=gen).tolist() for n in (10, 12, 14)]
    alone = Engine(tiny, strategy=strategy, batching={"max_batch": 1})
    serial = [alone.complete_ids(p, max_new_tokens=20, temperature=0).token_ids for p in prompts]
    engine = Engine(tiny, strategy=strategy, batching={"max_batch": 4})
    out = {}
    threads = [threading.Thread(target=lambda i=i, p=p: out.setdefault(
        i, engine.complete_ids(p, max_new_tokens=20, temperature=0).token_ids)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [out.get(i) for i in range(len(prompts))] == serial
