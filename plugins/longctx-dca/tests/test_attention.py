"""The three-part attention against a dense reference built from explicit positions (DCA §3, REFERENCE.md §1)."""

from __future__ import annotations

import pytest
import torch

from longctx_dca import kernels
from longctx_dca.attention import (
    Geometry,
    dca_attention,
    dca_blocked,
    dca_chunked,
    default_inv_freq,
    part_masks,
    rope_rotate,
)

D = 16
ROT = rope_rotate(default_inv_freq(D))


INV = default_inv_freq(D).double()


def rope_abs(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x (..., D) rotated at absolute positions ``pos`` (x.shape[:-1] broadcastable), rotate-half, float64."""
    ang = pos.double()[..., None] * INV  # (..., D/2)
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., : D // 2].double(), x[..., D // 2 :].double()
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def dense_reference(q_raw, k_raw, v, q_pos, k_pos, padding, g: Geometry, scale: float, earlier_factor=None):
    """Per query, per key: pick the DCA query position from the rules, rotate both, one softmax. (B, H, T, D).

    earlier_factor (T,): multiplies the scores of keys in earlier chunks (successive and inter parts) only."""
    s, w = g.chunk_len, g.local_window
    B, H, T, _ = q_raw.shape
    hkv, K = k_raw.shape[1], k_raw.shape[2]
    out = torch.zeros(B, H, T, D, dtype=torch.float64)
    for b in range(B):
        keys = rope_abs(k_raw[b], (k_pos[b] % s)[None, :])  # (Hkv, K, D)
        for t in range(T):
            i, qi = int(q_pos[b, t]), K - T + t
            ip = i % s
            allowed, qpos = [], []
            for j in range(qi + 1):
                if padding is not None and not bool(padding[b, j]) and j != qi:
                    continue
                cq, ck = i // s, int(k_pos[b, j]) // s
                p = ip if (ck == cq or j == qi) else min(ip + s, s + w) if ck == cq - 1 else s + w
                allowed.append(j)
                qpos.append(p)
            f = torch.ones(len(qpos), dtype=torch.float64)
            if earlier_factor is not None:  # same-chunk keys (and the query itself) sit at the intra position
                intra = torch.tensor([int(k_pos[b, j]) // s == i // s or j == qi for j in allowed])
                f = torch.where(intra, f, earlier_factor[t].double())
            for h in range(H):
                kh = h // (H // hkv)
                scores = torch.stack(
                    [rope_abs(q_raw[b, h, t], torch.tensor(p)) @ keys[kh, j] for j, p in zip(allowed, qpos)]
                ) * scale * f
                out[b, h, t] = torch.softmax(scores, 0) @ v[b, kh, allowed]
    return out


def rotated(x, pos, s):
    """x (B, H, N, D) rotated at pos mod s (pos (B, N)), as the model hands it over."""
    return rope_abs(x, (pos % s)[:, None, :])


@pytest.fixture
def inputs():
    torch.manual_seed(0)
    B, H, HKV, K = 2, 4, 2, 40
    q = torch.randn(B, H, K, D, dtype=torch.float64)
    k = torch.randn(B, HKV, K, D, dtype=torch.float64)
    v = torch.randn(B, HKV, K, D, dtype=torch.float64)
    return q, k, v


G = Geometry(chunk_len=9, local_window=3)  # 40 tokens: chunks 0..4, every part non-empty from position 18 on


def test_every_part_is_non_empty():
    K = 40
    pos = torch.arange(K)[None]
    intra, succ, inter = part_masks(pos, pos, torch.arange(K), None, G)
    for m in (intra, succ, inter):
        assert m.any()
    assert bool((intra | succ | inter).sum(-1).eq(torch.arange(1, K + 1)).all())  # a partition of j <= i
    assert not bool((intra & succ).any() or (intra & inter).any() or (succ & inter).any())


@pytest.mark.parametrize("backend", ["math", "cpu_flash"])
def test_chunked_matches_dense_reference(inputs, backend):
    q_raw, k_raw, v = inputs
    B, _, K, _ = q_raw.shape
    pos = torch.arange(K)[None].expand(B, K)
    ref = dense_reference(q_raw, k_raw, v, pos, pos, None, G, scale=0.3)
    q, k = rotated(q_raw, pos, G.chunk_len), rotated(k_raw, pos, G.chunk_len)
    dt, tol = (torch.float32, 2e-5) if backend == "cpu_flash" else (torch.float64, 1e-10)
    out = dca_chunked(q.to(dt), k.to(dt), v.to(dt), G, ROT, scale=0.3, backend=backend)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("t", [1, 5, 13])
def test_chunked_tail_queries_match_reference(inputs, t):
    """Queries that start mid-chunk (decode, unaligned prefill pieces) use the split intra part."""
    q_raw, k_raw, v = inputs
    B, _, K, _ = q_raw.shape
    pos = torch.arange(K)[None].expand(B, K)
    ref = dense_reference(q_raw[:, :, K - t :], k_raw, v, pos[:, K - t :], pos, None, G, scale=0.3)
    q, k = rotated(q_raw, pos, G.chunk_len), rotated(k_raw, pos, G.chunk_len)
    out = dca_chunked(q[:, :, K - t :].float(), k.float(), v.float(), G, ROT, scale=0.3, backend="cpu_flash")
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


def test_blocked_with_padding_matches_reference(inputs):
    q_raw, k_raw, v = inputs
    B, _, K, _ = q_raw.shape
    padding = torch.ones(B, K, dtype=torch.bool)
    padding[1, :11] = False  # row 1 is left-padded by 11
    k_pos = (padding.long().cumsum(-1) - 1).clamp_min(0)
    ref = dense_reference(q_raw, k_raw, v, k_pos, k_pos, padding, G, scale=0.3)
    q, k = rotated(q_raw, k_pos, G.chunk_len), rotated(k_raw, k_pos, G.chunk_len)
    out = dca_attention(q, k, v, G, ROT, scale=0.3, q_pos=k_pos, k_pos=k_pos, key_padding=padding)
    torch.testing.assert_close(out.transpose(1, 2)[padding], ref.transpose(1, 2)[padding], atol=1e-10, rtol=1e-10)
    assert torch.isfinite(out).all()


def test_blocked_small_blocks_equal_one_block(inputs):
    q_raw, k_raw, v = inputs
    B, _, K, _ = q_raw.shape
    pos = torch.arange(K)[None].expand(B, K)
    q, k = rotated(q_raw, pos, G.chunk_len), rotated(k_raw, pos, G.chunk_len)
    one = dca_blocked(q, k, v, G, ROT, scale=0.3, q_pos=pos, k_pos=pos)
    many = dca_blocked(q, k, v, G, ROT, scale=0.3, q_pos=pos, k_pos=pos, block_elements=1)
    torch.testing.assert_close(one, many)


def test_temperature_scaling_matches_reference(inputs):
    """With the temperature on, logits of queries past L are scaled by (0.1 ln(n/L) + 1)^2 in every part."""
    q_raw, k_raw, v = inputs
    B, _, K, _ = q_raw.shape
    g = Geometry(chunk_len=9, local_window=3, pretraining_length=16, temperature_scaling=True)
    pos = torch.arange(K)[None].expand(B, K)
    n = (pos[0] + 1).double()
    f = torch.where(n > 16, (0.1 * torch.log(n / 16) + 1) ** 2, torch.ones_like(n))
    ref = dense_reference(q_raw * f[None, None, :, None], k_raw, v, pos, pos, None, g, scale=0.3)
    q, k = rotated(q_raw, pos, g.chunk_len), rotated(k_raw, pos, g.chunk_len)
    for backend in ("cpu_flash", "math"):
        dt = torch.float32 if backend == "cpu_flash" else torch.float64
        out = dca_attention(q.to(dt), k.to(dt), v.to(dt), g, ROT, scale=0.3, backend=backend)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_temperature_on_earlier_chunks_only(inputs, power):
    """temperature_parts="earlier": the intra-chunk scores stay as trained, the successive and inter ones are scaled
    by (0.1 ln(n/L) + 1)^power; every backend and path agrees with the dense reference."""
    q_raw, k_raw, v = inputs
    B, _, K, _ = q_raw.shape
    g = Geometry(chunk_len=9, local_window=3, pretraining_length=16, temperature_scaling=True,
                 temperature_power=power, temperature_parts="earlier")
    pos = torch.arange(K)[None].expand(B, K)
    n = (pos[0] + 1).double()
    f = torch.where(n > 16, (0.1 * torch.log(n / 16) + 1) ** power, torch.ones_like(n))
    ref = dense_reference(q_raw, k_raw, v, pos, pos, None, g, scale=0.3, earlier_factor=f)
    q, k = rotated(q_raw, pos, g.chunk_len), rotated(k_raw, pos, g.chunk_len)
    for backend in ("cpu_flash", "math"):
        dt = torch.float32 if backend == "cpu_flash" else torch.float64
        out = dca_attention(q.to(dt), k.to(dt), v.to(dt), g, ROT, scale=0.3, backend=backend)
        torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)
        tail = dca_chunked(q[:, :, K - 5 :].to(dt), k.to(dt), v.to(dt), g, ROT, scale=0.3, backend=backend)
        torch.testing.assert_close(tail.double(), ref[:, :, K - 5 :], atol=2e-5, rtol=2e-5)
    blocked = dca_blocked(q, k, v, g, ROT, scale=0.3, q_pos=pos, k_pos=pos)
    torch.testing.assert_close(blocked, ref, atol=1e-10, rtol=1e-10)


def test_merge_of_split_keys_is_exact():
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 12, 8), torch.randn(1, 2, 12, 8)
    whole = kernels.attend_math(q, k, v, scale=0.5)
    parts = [kernels.attend_math(q, k[:, :, a:b], v[:, :, a:b], scale=0.5) for a, b in ((0, 3), (3, 4), (4, 12))]
    o, lse = kernels.merge(parts)
    torch.testing.assert_close(o, whole[0])
    torch.testing.assert_close(lse, whole[1])


def test_pick_backend():
    assert kernels.pick(torch.device("cpu"), torch.float32) == "cpu_flash"
    assert kernels.pick(torch.device("cpu"), torch.float32, "cuda_cudnn") == "cpu_flash"  # unusable here
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        kernels.pick(torch.device("cpu"), torch.float32, "nope")


@pytest.mark.parametrize("temp", [None, "all", "earlier"])
def test_fused_decode_equals_chunked_for_one_query(temp):
    """The fixed decode step (one pass, three query versions chosen per key) equals the chunked three-part path for
    a single query at every kind of position: first chunk, the w rows after a boundary, the rest of a chunk."""
    from longctx_llm.kernels import DecodeView
    from longctx_llm.model import Rotary
    from longctx_dca.attention import dca_chunked, dca_decode

    torch.manual_seed(0)
    g = Geometry(chunk_len=24, local_window=6, pretraining_length=32, temperature_scaling=temp is not None,
                 temperature_parts=temp or "all")
    inv_freq = default_inv_freq(16)
    rotary = Rotary(inv_freq=inv_freq)
    H, Hkv, D, cap = 4, 2, 16, 128
    k, v = torch.randn(1, Hkv, cap, D, dtype=torch.float64), torch.randn(1, Hkv, cap, D, dtype=torch.float64)
    for n in (1, 5, 24, 25, 29, 30, 47, 48, 53, 100, 128):  # keys held, the new one included
        q = torch.randn(1, H, 1, D, dtype=torch.float64)
        ref = dca_chunked(q, k[:, :, :n], v[:, :, :n], g, rotary.rotate, scale=0.25, backend="math", fused=False)
        view = DecodeView(valid=torch.tensor([n], dtype=torch.int32), first=torch.tensor([0], dtype=torch.int32))
        out = dca_decode(q, k, v, g, rotary, view=view, scale=0.25, triton=False)
        assert (out - ref).abs().max() < 1e-6, n
