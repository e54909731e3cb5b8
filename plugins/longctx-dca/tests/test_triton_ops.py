"""The Triton kernels (:mod:`longctx_dca.triton_ops`) against their PyTorch references; skipped without Triton.

On a CUDA machine they run on the GPU, in bf16 too; elsewhere under Triton's CPU interpreter (``TRITON_INTERPRET``,
set here before Triton is imported), in float32 only: the interpreter's float32 -> bf16 conversion does not round
like the GPU does (it can even drop a carry), so bf16 outputs are checked on the GPU alone.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are defined (importing triton_ops)

from longctx_dca import kernels, triton_ops  # noqa: E402
from longctx_dca.attention import Geometry, dca_blocked, dca_chunked, default_inv_freq, rope_rotate  # noqa: E402
from longctx_llm.model import Rotary  # noqa: E402

DEV = torch.device("cuda" if CUDA else "cpu")
OUT_DTYPES = [torch.float32, torch.bfloat16] if CUDA else [torch.float32]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _strided(shape, dtype, gen, layout="bhtd"):
    """A random (B, H, T, D) tensor in one of the layouts the attention kernels return (or a row slice of one)."""
    B, H, T, D = shape
    if layout == "bthd":  # flash-style storage, viewed as (B, H, T, D)
        x = torch.randn(B, T, H, D, generator=gen).transpose(1, 2)
    elif layout == "slice":  # rows 2 .. 2+T of a longer tensor
        x = torch.randn(B, H, T + 5, D, generator=gen)[:, :, 2 : 2 + T]
    else:
        x = torch.randn(B, H, T, D, generator=gen)
    return x.to(DEV, dtype)


@pytest.mark.parametrize("P", [1, 2, 3, 4])
@pytest.mark.parametrize("out_dtype", OUT_DTYPES)
def test_merge_into_matches_torch(P, out_dtype):
    gen = _gen(P)
    B, H, T, D = 2, 3, 37, 24  # T and D not powers of two: masked tails
    layouts = ["bhtd", "bthd", "slice", "bhtd"]
    parts = []
    for p in range(P):
        o = _strided((B, H, T, D), torch.bfloat16 if p % 2 else torch.float32, gen, layouts[p])
        lse = (3 * torch.randn(B, H, T + 3, generator=gen))[..., :T].to(DEV)  # padded, as cuDNN returns it
        if p == 1:
            lse[:, :, ::5] = float("-inf")  # rows where this part is empty
        parts.append((o, lse))
    ref_o, ref_lse = kernels.merge(parts)
    whole = torch.full((B, H, T + 8, D), 7.0, dtype=out_dtype, device=DEV)
    lse = torch.empty(B, H, T, device=DEV)
    triton_ops.merge_into(whole[:, :, 4 : 4 + T], parts, lse=lse)  # into a row slice of a larger output
    torch.testing.assert_close(whole[:, :, 4 : 4 + T], ref_o.to(out_dtype))
    torch.testing.assert_close(lse, ref_lse)
    assert bool((whole[:, :, :4] == 7).all() and (whole[:, :, 4 + T :] == 7).all())  # nothing outside the slice
    again = torch.zeros_like(whole)
    triton_ops.merge_into(again[:, :, 4 : 4 + T], parts)  # without the merged LSE
    torch.testing.assert_close(again[:, :, 4 : 4 + T], whole[:, :, 4 : 4 + T], atol=0, rtol=0)


def test_merge_into_all_empty_row_is_zero():
    o = torch.randn(1, 1, 4, 8, device=DEV)
    lse = torch.tensor([[[0.0, float("-inf"), 1.0, 2.0]]], device=DEV)
    out, merged = torch.empty_like(o), torch.empty_like(lse)
    triton_ops.merge_into(out, [(o, lse), (o, lse.clone())], lse=merged)
    assert bool((out[0, 0, 1] == 0).all()) and merged[0, 0, 1] == float("-inf")
    torch.testing.assert_close(out[0, 0, [0, 2, 3]], o[0, 0, [0, 2, 3]])


@pytest.mark.parametrize("rotary_dim", [16, 12])  # full and partial rotary dim (head dim 16)
@pytest.mark.parametrize("dtype", OUT_DTYPES)
def test_rotate_matches_rotary(rotary_dim, dtype):
    gen = _gen(rotary_dim)
    rotary = Rotary(inv_freq=default_inv_freq(rotary_dim, 500000.0).to(DEV))
    x = _strided((2, 3, 29, 16), dtype, gen, "slice")
    delta = torch.randint(0, 6144, (29,), generator=gen).to(DEV)  # angles up to chunk_size radians
    out = triton_ops.rotate(x, delta, rotary.inv_freq)
    ref = rotary.rotate(x.float(), delta).to(dtype)  # what attention._rot does: float32, then the model dtype
    assert out.is_contiguous() and out.dtype == dtype
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else {}  # bf16: assert_close's defaults, ~1 ulp
    torch.testing.assert_close(out, ref, **tol)
    assert bool((out[..., rotary_dim:] == x[..., rotary_dim:]).all())  # past the rotary dim: copied as is


@pytest.mark.parametrize(
    "s,w,K,T", [(9, 3, 40, 40), (9, 3, 40, 12), (9, 3, 40, 6), (9, 3, 37, 1), (9, 3, 40, 1), (7, 1, 50, 23),
                (16, 5, 100, 37)],
)  # fmt: skip
@pytest.mark.parametrize("temperature", [False, True, "earlier"])
def test_fused_chunked_equals_blocked(s, w, K, T, temperature):
    """The whole fused path (Triton rotation from cached tables + merge) against the float64 blocked reference."""
    g = Geometry(chunk_len=s, local_window=w, pretraining_length=16, temperature_scaling=bool(temperature),
                 temperature_parts="earlier" if temperature == "earlier" else "all")
    inv = default_inv_freq(16)
    rot = rope_rotate(inv)
    gen = _gen(K + T)
    q, k, v = (torch.randn(2, h, K, 16, generator=gen, dtype=torch.float64) for h in (4, 2, 2))
    pos = torch.arange(K)[None].expand(2, K)
    ref = dca_blocked(q[:, :, K - T :], k, v, g, rot, scale=0.3, q_pos=pos[:, K - T :], k_pos=pos)
    dtype = torch.float32
    out = dca_chunked(q[:, :, K - T :].to(DEV, dtype), k.to(DEV, dtype), v.to(DEV, dtype), g, rot, scale=0.3,
                      inv_freq=inv, fused=True)  # fmt: skip
    torch.testing.assert_close(out.double().cpu(), ref, atol=2e-5, rtol=2e-5)
    if CUDA:  # bf16 on the GPU: fused and PyTorch paths agree to bf16 rounding
        qb, kb, vb = (x.to(DEV, torch.bfloat16) for x in (q[:, :, K - T :], k, v))
        fast = dca_chunked(qb, kb, vb, g, rot, scale=0.3, inv_freq=inv, fused=True)
        slow = dca_chunked(qb, kb, vb, g, rot, scale=0.3, fused=False)
        torch.testing.assert_close(fast, slow, atol=2e-2, rtol=2e-2)


def test_dca_tables_cached_per_inv_freq():
    a, b = default_inv_freq(16), default_inv_freq(16, 500000.0)
    ta = triton_ops.dca_tables(a, 9, 3, DEV)
    assert triton_ops.dca_tables(a, 9, 3, DEV) is ta  # built once
    tb = triton_ops.dca_tables(b, 9, 3, DEV)
    assert not torch.equal(ta[0][0], tb[0][0])  # another model's frequencies: its own tables
    (cos, sin), (ncos, _) = ta
    assert cos.shape == (9, 8) and ncos.shape == (1, 8)
    j = torch.arange(9)
    torch.testing.assert_close(cos.cpu(), torch.cos((9 + 3 - (3 + j) % 9)[:, None].float() * a[None]))
