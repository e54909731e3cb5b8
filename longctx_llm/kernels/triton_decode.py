"""The split-key decode kernel behind :func:`longctx_llm.kernels.decode_attention.attend` (CUDA fast path).

Grid: (batch x key/value heads, key slices). A program loads the P x G query rows that read its key/value head
(P query versions, G grouped query heads), streams its slice of keys and values once in blocks, scores each key
with the version its position selects, and keeps an online softmax per row (running max, sum, weighted values). The
slices' partial results, and the versions of one head, cover disjoint keys, so one log-sum-exp merge (a second
small kernel) gives the exact softmax over all keys. With a rotation, the program makes the P versions itself from
one query and per-row cos/sin tables (DCA's re-rotated queries cost no kernel of their own).

Importing this module imports Triton. With ``TRITON_INTERPRET=1`` (set before Triton is imported) it also runs on
CPU tensors, which is how the tests check it against :func:`~longctx_llm.kernels.decode_attention.attend_reference`.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # keys per inner block
EMPTY = tl.constexpr(-1.0e30)  # running max of a row that has seen no key yet (finite: exp(EMPTY - EMPTY) stays 1, never NaN)


@triton.jit
def _decode_kernel(
    Q, K, V, VALID, FIRST, BOUNDS, O, M, L, COS, SIN, FACTOR,
    sq_b, sq_p, sq_h,
    sc_b, sc_p, sf_b,
    sk_b, sk_h, sk_n,
    sv_b, sv_h, sv_n,
    so_b, so_h, so_s, so_r,
    sm_b, sm_h, sm_s,
    Hkv, G, R, P, keys_per_split, scale,
    D: tl.constexpr, DV: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
    ROTATE: tl.constexpr, HALF: tl.constexpr, HAS_FACTOR: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    valid = tl.load(VALID + b)
    first = tl.load(FIRST + b)
    b0 = tl.load(BOUNDS + 2 * b)
    b1 = tl.load(BOUNDS + 2 * b + 1)

    rows = tl.arange(0, BLOCK_R)
    ver = rows // G  # the query version of each row
    head = h * G + rows % G
    rmask = rows < R
    dq = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    qrow = Q + b * sq_b + ver[:, None] * sq_p + head[:, None] * sq_h
    q = tl.load(qrow + dq[None, :], mask=rmask[:, None] & (dq[None, :] < D), other=0.0)  # (BLOCK_R, BLOCK_D)
    if ROTATE:  # version p of a row: the query rotated by the angles of table row (b, p), rotate-half RoPE, float32
        rot = dq < 2 * HALF
        lower = dq < HALF
        partner = tl.where(lower, dq + HALF, dq - HALF)
        rmask2 = rmask[:, None] & rot[None, :]
        qp = tl.load(qrow + partner[None, :], mask=rmask2, other=0.0).to(tl.float32)
        hidx = tl.where(lower, dq, dq - HALF)
        c = tl.load(COS + b * sc_b + ver[:, None] * sc_p + hidx[None, :], mask=rmask2, other=1.0)
        sn = tl.load(SIN + b * sc_b + ver[:, None] * sc_p + hidx[None, :], mask=rmask2, other=0.0)
        x = q.to(tl.float32) * c + tl.where(lower, -1.0, 1.0)[None, :] * qp * sn
        if HAS_FACTOR:
            x = x * tl.load(FACTOR + b * sf_b + ver, mask=rmask, other=1.0)[:, None]
        q = x.to(K.dtype.element_ty)

    lo = tl.maximum(split * keys_per_split, first)
    hi = tl.minimum(split * keys_per_split + keys_per_split, valid)
    m_i = tl.full([BLOCK_R], EMPTY, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_DV], dtype=tl.float32)
    for start in range(lo, hi, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        cmask = cols < hi
        k = tl.load(K + b * sk_b + h * sk_h + cols[:, None] * sk_n + dq[None, :],
                    mask=cmask[:, None] & (dq[None, :] < D), other=0.0)  # (BLOCK_N, BLOCK_D)
        if IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * scale  # (BLOCK_R, BLOCK_N) float32
        kver = tl.minimum(tl.where(cols >= b0, 0, tl.where(cols >= b1, 1, 2)), P - 1)  # versions past P-1: the last
        ok = (ver[:, None] == kver[None, :]) & cmask[None, :]
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + b * sv_b + h * sv_h + cols[:, None] * sv_n + dv[None, :],
                    mask=cmask[:, None] & (dv[None, :] < DV), other=0.0)  # (BLOCK_N, BLOCK_DV)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    o_ptr = O + b * so_b + h * so_h + split * so_s + rows[:, None] * so_r + dv[None, :]
    tl.store(o_ptr, acc, mask=rmask[:, None] & (dv[None, :] < DV))
    ml = b * sm_b + h * sm_h + split * sm_s + rows
    tl.store(M + ml, m_i, mask=rmask)
    tl.store(L + ml, l_i, mask=rmask)


@triton.jit
def _merge_kernel(
    O, M, L, OUT,
    so_b, so_h, so_s, so_r,
    sm_b, sm_h, sm_s,
    sout_b, sout_h,
    Hkv, G, S,
    P: tl.constexpr, DV: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    """One program per (row, key/value head, grouped head): the LSE merge of its S slices x P versions."""
    bh = tl.program_id(0)
    g = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    sl = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    smask = sl < S
    top = tl.full([BLOCK_S], EMPTY, dtype=tl.float32)
    for p in tl.static_range(P):
        m = tl.load(M + b * sm_b + h * sm_h + sl * sm_s + p * G + g, mask=smask, other=EMPTY)
        top = tl.maximum(top, m)
    big = tl.max(top, 0)
    num = tl.zeros([BLOCK_DV], dtype=tl.float32)
    den = 0.0
    for p in tl.static_range(P):
        ml = b * sm_b + h * sm_h + sl * sm_s + p * G + g
        w = tl.exp(tl.load(M + ml, mask=smask, other=EMPTY) - big)  # (BLOCK_S,); 0 for empty slices
        den += tl.sum(w * tl.load(L + ml, mask=smask, other=0.0), 0)
        o = tl.load(O + b * so_b + h * so_h + sl[:, None] * so_s + (p * G + g) * so_r + dv[None, :],
                    mask=smask[:, None] & (dv[None, :] < DV), other=0.0)  # (BLOCK_S, BLOCK_DV)
        num += tl.sum(w[:, None] * o, 0)
    out = num / den
    tl.store(OUT + b * sout_b + (h * G + g) * sout_h + dv, out.to(OUT.dtype.element_ty), mask=dv < DV)


MAX_SPLITS = 64  # slices per key/value head (the merge kernel holds one slice per lane)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _programs(device: torch.device) -> int:
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def attend(q, k, v, *, valid, first, bounds, scale: float, rotation=None) -> torch.Tensor:
    """See :func:`longctx_llm.kernels.decode_attention.attend` (same arguments, first/bounds given)."""
    # Triton launches on the current device: make it the tensors' (a model on cuda:1)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        return _attend(q, k, v, valid=valid, first=first, bounds=bounds, scale=scale, rotation=rotation)


def _attend(q, k, v, *, valid, first, bounds, scale: float, rotation=None) -> torch.Tensor:
    B, P, H, D = q.shape
    if rotation is not None:
        cos, sin, factor = rotation
        P = cos.shape[1]
    Hkv, N, DV = k.shape[1], k.shape[2], v.shape[-1]
    G = H // Hkv
    R = P * G
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    want = min(MAX_SPLITS, max(1, _programs(q.device) // (B * Hkv)))
    keys_per_split = _cdiv(_cdiv(N, want), BLOCK_N) * BLOCK_N  # a multiple of BLOCK_N
    S = _cdiv(N, keys_per_split)
    o = torch.empty(B, Hkv, S, R, DV, dtype=torch.float32, device=q.device)
    m = torch.empty(B, Hkv, S, R, dtype=torch.float32, device=q.device)
    l = torch.empty_like(m)
    valid = valid.to(torch.int32)
    first = first.to(torch.int32)
    bounds = bounds.to(torch.int32).contiguous()
    if rotation is None:
        cos = sin = factor = o  # unused pointers
        half = 1
    else:
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        factor = factor.float().contiguous() if factor is not None else None
        half = cos.shape[-1]
    _decode_kernel[(B * Hkv, S)](
        q, k, v, valid, first, bounds, o, m, l, cos, sin, factor if factor is not None else cos,
        q.stride(0), 0 if rotation is not None else q.stride(1), q.stride(2),
        cos.stride(0) if rotation is not None else 0, cos.stride(1) if rotation is not None else 0,
        factor.stride(0) if rotation is not None and factor is not None else 0,
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        o.stride(0), o.stride(1), o.stride(2), o.stride(3),
        m.stride(0), m.stride(1), m.stride(2),
        Hkv, G, R, P, keys_per_split, scale,
        D=D, DV=DV, BLOCK_D=triton.next_power_of_2(D), BLOCK_DV=triton.next_power_of_2(DV),
        BLOCK_R=max(16, triton.next_power_of_2(R)), BLOCK_N=BLOCK_N, IEEE=q.dtype == torch.float32,
        ROTATE=rotation is not None, HALF=half, HAS_FACTOR=rotation is not None and factor is not None,
    )
    out = torch.empty(B, H, DV, dtype=q.dtype, device=q.device)
    _merge_kernel[(B * Hkv, G)](
        o, m, l, out,
        o.stride(0), o.stride(1), o.stride(2), o.stride(3),
        m.stride(0), m.stride(1), m.stride(2),
        out.stride(0), out.stride(1),
        Hkv, G, S,
        P=P, DV=DV, BLOCK_S=max(2, triton.next_power_of_2(S)), BLOCK_DV=triton.next_power_of_2(DV),
    )
    return out[:, :, None, :]  # (B, H, 1, DV)
