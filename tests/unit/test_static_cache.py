"""The preallocated cache and its fixed decode step equal the DynamicCache path (issue 15's exactness).

On CPU the fixed step runs eagerly: the same cache writes, device-side valid lengths and attention kernels (the
PyTorch reference of :mod:`longctx_llm.kernels.decode_attention`) that a CUDA graph replays on the GPU. The Triton
kernel itself is checked against that reference under Triton's CPU interpreter when Triton is installed.
"""

from __future__ import annotations

import os

import pytest
import torch

from longctx_llm import registry
from longctx_llm.kernels import StaticCache
from longctx_llm.kernels.decode_attention import attend_reference, rotated_versions

TOL = 2e-5  # float32 on CPU: the fixed step's einsum softmax against SDPA / DCA's merged partial attentions


def _strategy(name, **kw):
    return registry.get("strategy", name)(**kw)


def _pair(model, name, batch=1, **kw):
    dyn = _strategy(name, static_cache=False, **kw).new_state(model, batch)
    sta = _strategy(name, static_cache=True, **kw).new_state(model, batch)
    assert isinstance(sta.cache, StaticCache) and not isinstance(dyn.cache, StaticCache)
    return dyn, sta


def _close(a, b):
    assert (a - b).abs().max().item() < TOL, (a - b).abs().max().item()


CASES = [
    ("full", {}),
    ("dca", {"chunk_size": 48, "local_window": 8}),
    ("dca", {"chunk_size": 48, "local_window": 8, "temperature_scaling": True, "temperature_parts": "earlier"}),
]
IDS = ["full", "dca", "dca-temperature"]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_prefill_pieces_and_decode_equal_dynamic_cache(tiny_model, name, kw, arch):
    model = tiny_model(arch, max_positions=64)
    dyn, sta = _pair(model, name, **kw)
    torch.manual_seed(1)
    prompt = torch.randint(5, 1000, (1, 230))
    _close(dyn.forward(prompt, all_logits=True), sta.forward(prompt, all_logits=True))
    for t in torch.randint(5, 1000, (40,)).tolist():  # crosses DCA chunk boundaries and the cache's growth
        one = torch.tensor([[t]])
        _close(dyn.forward(one), sta.forward(one))
    assert sta.cache.length == dyn.seen == sta.seen == 270
    assert sta.cache.generation >= 1  # it grew while decoding (no reserve was given)


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_rewind_and_save_restore(tiny_model, name, kw):
    model = tiny_model("llama", max_positions=64)
    dyn, sta = _pair(model, name, **kw)
    x = torch.randint(5, 1000, (1, 120))
    dyn.forward(x)
    sta.forward(x)
    dyn.rewind(70)
    sta.rewind(70)
    y = torch.randint(5, 1000, (1, 9))
    _close(dyn.forward(y, all_logits=True), sta.forward(y, all_logits=True))
    tensors, meta = sta.state_dict()
    assert tensors["layer0.keys"].shape[2] == 79
    restored = _strategy(name, static_cache=True, **kw).new_state(model, 1)
    restored.load_state_dict(tensors, meta)
    from_dynamic = _strategy(name, static_cache=True, **kw).new_state(model, 1)
    from_dynamic.load_state_dict(*dyn.state_dict())  # the file format is the same for both caches
    for t in (11, 12, 13):
        one = torch.tensor([[t]])
        ref = dyn.forward(one)
        _close(ref, restored.forward(one))
        _close(ref, from_dynamic.forward(one))


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_left_padded_batch_decodes_like_rows_alone(tiny_model, name, kw):
    model = tiny_model("llama", max_positions=64)
    a = torch.randint(5, 1000, (1, 70))
    b = torch.randint(5, 1000, (1, 55))
    ids = torch.cat([a, torch.cat([torch.full((1, 15), 2), b], dim=1)])
    mask = torch.ones_like(ids)
    mask[1, :15] = 0
    batch = _strategy(name, static_cache=True, **kw).new_state(model, 2)
    batch.reserve(100)
    batch.forward(ids, mask)
    alone = [_strategy(name, static_cache=False, **kw).new_state(model, 1) for _ in range(2)]
    alone[0].forward(a)
    alone[1].forward(b)
    for step in range(6):
        toks = torch.tensor([[100 + step], [200 + step]])
        out = batch.forward(toks)  # no mask: every row's new token is real
        assert batch._first is not None  # the fixed path (left padding is a prefix)
        for r in range(2):
            _close(out[r : r + 1], alone[r].forward(toks[r : r + 1]))


def test_reserve_allocates_once(tiny_model):
    model = tiny_model("llama", max_positions=64)
    st = _strategy("full", static_cache=True).new_state(model, 1)
    st.reserve(300)
    st.forward(torch.randint(5, 1000, (1, 100)))
    for t in range(50):
        st.forward(torch.tensor([[t + 5]]))
    assert st.cache.capacity >= 300 and st.cache.generation == 0


def test_ccm_style_splice_on_static_cache(tiny_model):
    model = tiny_model("llama", max_positions=256)
    dyn, sta = _pair(model, "full")
    x = torch.randint(5, 1000, (1, 40))
    dyn.forward(x)
    sta.forward(x)
    for st in (dyn, sta):
        st.compact_tail(10, 5)
    assert dyn.seen == sta.seen == 30
    y = torch.randint(5, 1000, (1, 4))
    _close(dyn.forward(y, all_logits=True), sta.forward(y, all_logits=True))


def test_cpu_default_is_the_dynamic_cache(tiny_model):
    st = _strategy("full").new_state(tiny_model("llama"), 1)
    assert not isinstance(st.cache, StaticCache) and not st.cuda_graphs


def _reference_case(P=3):
    torch.manual_seed(0)
    B, H, Hkv, D, N = 2, 8, 2, 64, 300
    q = torch.randn(B, P, H, D)
    k, v = torch.randn(B, Hkv, N, D), torch.randn(B, Hkv, N, D)
    valid, first = torch.tensor([250, 300]), torch.tensor([0, 7])
    bounds = torch.tensor([[200, 100], [150, 20]])
    return q, k, v, valid, first, bounds


def test_reference_equals_sdpa_and_split_parts():
    q, k, v, valid, first, bounds = _reference_case()
    out = attend_reference(q, k, v, valid=valid, first=first, bounds=bounds, scale=0.125)
    for b in range(2):  # version p scores keys of part p: the same as a softmax over the concatenated parts
        n0, n1, f, lo, hi = int(bounds[b, 0]), int(bounds[b, 1]), int(first[b]), 0, int(valid[b])
        parts = [(0, n0, hi), (1, n1, n0), (2, f, n1)]
        s = []
        vs = []
        for p, a, e in parts:
            kk = k[b : b + 1, :, a:e].repeat_interleave(4, 1)
            s.append(torch.einsum("hd,hnd->hn", q[b, p], kk[0]) * 0.125)
            vs.append(v[b, :, a:e].repeat_interleave(4, 0))
        w = torch.softmax(torch.cat(s, -1), -1)
        ref = torch.einsum("hn,hnd->hd", w, torch.cat(vs, 1))
        assert (out[b, :, 0] - ref).abs().max() < 1e-5


def test_triton_kernel_matches_reference():
    """On a GPU the compiled kernel; elsewhere Triton's CPU interpreter (when Triton is installed)."""
    cuda = torch.cuda.is_available()
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from longctx_llm.kernels import triton_decode

    for P in (1, 3):
        q, k, v, valid, first, bounds = (t.cuda() if cuda else t for t in _reference_case(P))
        ref = attend_reference(q, k, v, valid=valid, first=first, bounds=bounds, scale=0.125)
        out = triton_decode.attend(q, k, v, valid=valid, first=first, bounds=bounds, scale=0.125)
        assert (out - ref).abs().max() < 1e-5
    # versions made in the kernel from one query: rotated by per-row angles (a partial rotary dim), then scaled
    q, k, v, valid, first, bounds = (t.cuda() if cuda else t for t in _reference_case(1))
    angles = torch.rand(2, 3, 16, device=q.device) * 6.0  # rotary dim 32 of head dim 64
    rotation = (angles.cos(), angles.sin(), torch.rand(2, 3, device=q.device) + 0.5)
    ref = attend_reference(rotated_versions(q, *rotation), k, v, valid=valid, first=first, bounds=bounds, scale=0.125)
    out = triton_decode.attend(q, k, v, valid=valid, first=first, bounds=bounds, scale=0.125, rotation=rotation)
    assert (out - ref).abs().max() < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_cuda_graph_decode_equals_eager(tiny_model, name, kw):
    """On a GPU the defaults are the static cache + graph-replayed steps: equal to the eager DynamicCache path
    through prefill, decode steps, the cache's growth (new graphs), a rewind and a save -> restore."""
    model = tiny_model("llama", device="cuda", max_positions=64)
    fast = _strategy(name, **kw).new_state(model, 1)
    slow = _strategy(name, static_cache=False, cuda_graphs=False, **kw).new_state(model, 1)
    assert isinstance(fast.cache, StaticCache) and fast.cuda_graphs
    x = torch.randint(5, 1000, (1, 200))
    _close_cuda = lambda a, b: float((a - b).abs().max()) < 1e-4  # noqa: E731  (float32, Triton in IEEE mode)
    assert _close_cuda(fast.forward(x, all_logits=True), slow.forward(x, all_logits=True))
    for t in range(100):  # past 256 tokens: the cache grows and the graph is captured again
        one = torch.tensor([[t + 7]])
        assert _close_cuda(fast.forward(one), slow.forward(one))
    assert fast._graphs is not None and fast._graphs.captured >= 1 and fast.cache.generation >= 1
    fast.rewind(150)
    slow.rewind(150)
    for t in range(5):
        one = torch.tensor([[t + 70]])
        assert _close_cuda(fast.forward(one), slow.forward(one))
    restored = _strategy(name, **kw).new_state(model, 1)
    restored.load_state_dict(*fast.state_dict())
    for t in range(5):
        one = torch.tensor([[t + 90]])
        assert _close_cuda(restored.forward(one), slow.forward(one))


def test_reservation_is_capped_by_the_window(tiny_model_dir):
    """A client asking for a huge reply gets a cache the size of the window, not of max_new_tokens."""
    from longctx_llm import Engine

    eng = Engine(str(tiny_model_dir), strategy={"name": "full", "static_cache": True, "max_length": 300},
                 device="cpu", dtype="float32")
    seen = []
    original = StaticCache.reserve

    def spy(self, tokens):
        seen.append(tokens)
        return original(self, tokens)

    StaticCache.reserve = spy
    try:
        eng.complete("hello", max_new_tokens=2_000_000, temperature=0.0)
    finally:
        StaticCache.reserve = original
    assert seen and max(seen) <= 300


def test_sessions_restore_across_speed_only_options(tiny_model_dir, tmp_path):
    """static_cache / cuda_graphs / compile change speed only: a session saved under one setting (or before these
    options existed) restores under another, and answers the same."""
    from longctx_llm import Engine

    def engine(**opts):
        return Engine(str(tiny_model_dir), strategy={"name": "full", **opts}, device="cpu", dtype="float32")

    a = engine(static_cache=True)
    first = a.chat([{"role": "user", "content": "hi"}], session_id="s", max_new_tokens=4, temperature=0.0)
    a.save_session("s", tmp_path / "saved")
    b = engine()  # the default (DynamicCache on CPU)
    b.load_session(tmp_path / "saved", "s")
    assert a._header()["strategy"] == b._header()["strategy"] == {
        "name": "full", "max_length": None, "prefill_chunk_size": 2048  # what sessions saved before the options hold
    }
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": first.text},
            {"role": "user", "content": "more"}]
    ra = a.chat(msgs, session_id="s", max_new_tokens=4, temperature=0.0)
    rb = b.chat(msgs, session_id="s", max_new_tokens=4, temperature=0.0)
    assert ra.token_ids == rb.token_ids


def test_adapter_cache_functions_take_a_static_cache(tiny_model):
    """hf_adapter's cache helpers (used by benchmarks and memories) work on the preallocated cache too."""
    from longctx_llm.model import hf_adapter

    st = _strategy("full", static_cache=True).new_state(tiny_model("llama"), 1)
    st.forward(torch.randint(5, 1000, (1, 20)))
    kv = hf_adapter.cache_kv(st.cache)
    assert len(kv) == 2 and kv[0][0].shape[2] == 20
    assert set(hf_adapter.cache_tensors(st.cache)) == {"layer0.keys", "layer0.values", "layer1.keys", "layer1.values"}
    hf_adapter.crop_cache(st.cache, 12)
    assert hf_adapter.cache_length(st.cache) == 12
    hf_adapter.set_cache_kv(st.cache, 0, kv[0][0][:, :, :5].clone(), kv[0][1][:, :, :5].clone())
    assert st.cache.length == 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_concurrent_sessions_while_graphs_are_captured(tiny_model):
    """Sessions in other threads keep doing CUDA work (sampling, cache allocation, copies) while one thread captures
    its decode graph: every reply is the one it gets alone (found by `longctx serve` under 16 clients: a request
    failed with "operation not permitted when stream is capturing" before captures were thread-local)."""
    import threading

    from longctx_llm import Engine

    engine = Engine(tiny_model("llama", device="cuda", max_positions=512), strategy="full")
    prompts = [f"Tell me about the number {i}." for i in range(8)]
    alone = [engine.chat([{"role": "user", "content": p}], max_new_tokens=40, temperature=0.0).text for p in prompts]
    for _ in range(3):  # fresh sessions: every thread captures its own graphs while the others decode
        got, errors = [None] * len(prompts), []

        def ask(i):
            try:
                got[i] = engine.chat([{"role": "user", "content": prompts[i]}], session_id=f"s{i}-{_}",
                                     max_new_tokens=40, temperature=0.0).text
            except Exception as exc:  # noqa: BLE001  (collected, asserted below)
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert got == alone
