"""The chunked path (row groups by i' = i mod s, parts merged into output slices) against the blocked reference.

``dca_blocked`` builds each part from explicit masks (DCA §3), so it shares none of the chunked path's row/key
bookkeeping: agreement on random inputs, for every layout of the query range against the chunk grid, is the check.
"""

from __future__ import annotations

import pytest
import torch

from longctx_dca.attention import Geometry, dca_blocked, dca_chunked, default_inv_freq, part_masks, rope_rotate

D = 16
ROT = rope_rotate(default_inv_freq(D))

# (chunk_len s, local_window w, keys K, queries T): the queries are the last T of the K positions
CASES = [
    (9, 3, 40, 40),  # whole prefill from 0: chunks 0..4
    (9, 3, 40, 13),  # starts at 27, a chunk start
    (9, 3, 40, 12),  # starts at 28: inside the first w rows (i' = 1)
    (9, 3, 40, 6),  # starts at 34: past the first w rows (i' = 7)
    (9, 3, 41, 20),  # starts at 21 (i' = 3 = w), spans chunks 2..4, ends 5 rows into chunk 4
    (9, 3, 37, 1),  # decode at i' = 0 (a chunk's first row)
    (9, 3, 39, 1),  # decode at i' = 2 (last row with i' < w)
    (9, 3, 40, 1),  # decode at i' = 3 (first row with i' >= w)
    (7, 1, 50, 23),  # w = 1
    (7, 6, 50, 50),  # w = s - 1
    (16, 5, 100, 37),
]


def _inputs(B, H, HKV, K, dtype, seed, d=D):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, K, d, generator=gen, dtype=torch.float64)
    k = torch.randn(B, HKV, K, d, generator=gen, dtype=torch.float64)
    v = torch.randn(B, HKV, K, d, generator=gen, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference(q, k, v, g, T, scale, rot=ROT):
    K = k.shape[2]
    pos = torch.arange(K)[None].expand(q.shape[0], K)
    q = q[:, :, K - T :].double()
    return dca_blocked(q, k.double(), v.double(), g, rot, scale=scale, q_pos=pos[:, K - T :], k_pos=pos)


def test_cases_cover_every_part():
    """Every case has queries with all three parts; together they hit both row groups (i' < w, i' >= w) often."""
    heads = tails = 0
    for s, w, K, T in CASES:
        g = Geometry(chunk_len=s, local_window=w)
        pos = torch.arange(K)[None]
        intra, succ, inter = part_masks(pos[:, K - T :], pos, torch.arange(K - T, K), None, g)
        assert intra.any() and succ.any() and inter.any(), (s, w, K, T)
        ip = torch.arange(K - T, K) % s
        heads += int((ip < w).any())
        tails += int((ip >= w).any())
    assert heads >= 5 and tails >= 5


@pytest.mark.parametrize("s,w,K,T", CASES)
@pytest.mark.parametrize("backend", ["math", "cpu_flash"])
def test_chunked_equals_blocked(s, w, K, T, backend):
    g = Geometry(chunk_len=s, local_window=w)
    dtype, tol = (torch.float64, 1e-10) if backend == "math" else (torch.float32, 2e-5)
    q, k, v = _inputs(2, 4, 2, K, dtype, seed=K * 1000 + T)
    ref = _reference(q, k, v, g, T, scale=0.3)
    out = dca_chunked(q[:, :, K - T :], k, v, g, ROT, scale=0.3, backend=backend, fused=False)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_chunked_with_temperature_equals_blocked():
    g = Geometry(chunk_len=9, local_window=3, pretraining_length=16, temperature_scaling=True)
    q, k, v = _inputs(1, 4, 1, 40, torch.float64, seed=7)
    for T in (40, 12, 1):
        out = dca_chunked(q[:, :, 40 - T :], k, v, g, ROT, scale=0.3, backend="math")
        torch.testing.assert_close(out, _reference(q, k, v, g, T, scale=0.3), atol=1e-10, rtol=1e-10)


def test_chunked_without_triton_ignores_inv_freq():
    """On CPU (no fused path) ``inv_freq`` is accepted and changes nothing: ``rotate`` does the rotation."""
    g = Geometry(chunk_len=9, local_window=3)
    q, k, v = _inputs(1, 4, 2, 40, torch.float32, seed=3)
    a = dca_chunked(q, k, v, g, ROT, scale=0.3, backend="cpu_flash")
    b = dca_chunked(q, k, v, g, ROT, scale=0.3, backend="cpu_flash", inv_freq=default_inv_freq(D), fused=False)
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["cuda_cudnn", "cuda_flash", "cuda_efficient"])
def test_cuda_backends_equal_blocked(backend):
    """bf16 on the GPU, as a model runs it (fused path when Triton is there, native grouped-query heads where the
    kernel takes them), against the float64 reference: within bf16 rounding."""
    from longctx_dca import kernels

    if not kernels.usable(backend, torch.device("cuda"), torch.bfloat16):
        pytest.skip(f"{backend} unusable here")
    g = Geometry(chunk_len=96, local_window=32)
    K, T, d = 400, 300, 64  # starts at 100: mid-chunk, inside the first w rows of chunk 1
    inv = default_inv_freq(d)
    q, k, v = _inputs(2, 8, 2, K, torch.float64, seed=11, d=d)
    ref = _reference(q, k, v, g, T, scale=0.2, rot=rope_rotate(inv))
    qc, kc, vc = (x.cuda().to(torch.bfloat16) for x in (q[:, :, K - T :], k, v))
    out = dca_chunked(qc, kc, vc, g, rope_rotate(inv.cuda()), scale=0.2, backend=backend, inv_freq=inv)
    err = (out.double().cpu() - ref).norm() / ref.norm()
    assert err < 1e-2, err


def test_failing_triton_kernels_fall_back_to_pytorch_ops(monkeypatch, caplog):
    """A Triton that cannot build the kernels on some GPU/dtype must not break DCA: PyTorch ops take over, for good."""
    import longctx_dca.attention as attn

    class Broken:
        calls = 0

        @staticmethod
        def merge_into(*a, **kw):
            Broken.calls += 1
            raise RuntimeError("no kernel image for this architecture")

    monkeypatch.setattr(attn, "_FUSED_OFF", set())
    monkeypatch.setattr(attn, "_fused_ops", lambda q, fused: None if (q.device, q.dtype) in attn._FUSED_OFF else Broken)
    q, k, v = _inputs(1, 2, 1, 40, torch.float32, 7)
    g = Geometry(9, 3)
    want = dca_chunked(q, k, v, g, ROT, scale=0.25, fused=False)
    with caplog.at_level("WARNING"):
        got = dca_chunked(q, k, v, g, ROT, scale=0.25)
    torch.testing.assert_close(got, want)
    assert "using PyTorch ops" in caplog.text and Broken.calls == 1
    dca_chunked(q, k, v, g, ROT, scale=0.25)  # the second call does not try the kernels again
    assert Broken.calls == 1
