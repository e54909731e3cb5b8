"""Fused Triton kernels for the memory-bound work DCA does around its attention calls (CUDA fast path).

:func:`longctx_dca.attention.dca_chunked` spends, per DCA chunk, a few full passes over (B, H, t, D) tensors
besides the attention kernels themselves: re-rotating the queries and merging the partial attentions by their
log-sum-exp. In PyTorch each is a chain of elementwise kernels through float32 temporaries; here each is one pass:

- :func:`merge_into` — the exact LSE merge (:func:`longctx_dca.kernels.merge`) of up to 4 partial attentions.
  Reads every part once in its own dtype (and its float32 LSE), accumulates in float32 and writes the result in
  the destination's dtype straight into ``out``, which may be a strided view (a row slice of the full output);
  optionally writes the merged LSE too.
- :func:`rotate` / :func:`rotate_tables` — rotate-half RoPE of x (B, H, T, D) by a per-row position delta (T,),
  or by precomputed cos/sin tables: reads x once in its dtype, rotates in float32, writes a contiguous copy
  (contiguous so that grouped-query heads fold into the query length for free, ``kernels._fold_gqa``). A partial
  rotary dim ``2 * len(inv_freq) < D`` leaves the rest of each row unchanged.

The cos/sin of ``delta * inv_freq`` are computed by PyTorch in float32 (a (T, R/2) table, ~1% of the bytes of x):
exactly what ``hf_adapter.Rotary.rotate`` computes, so the fused rotation matches the model's RoPE to float32
rounding, and no in-kernel sin/cos of large angles (up to chunk_size radians) has to be trusted. DCA's two
rotations only depend on ``i mod s``, so their tables are built once per model and cached (:func:`dca_tables`).

Importing this module imports Triton; :mod:`longctx_dca.attention` imports it lazily and only uses it for CUDA
tensors. With ``TRITON_INTERPRET=1`` (set before Triton is imported) the kernels also run on CPU tensors, which is
how the tests check them against the PyTorch reference without a GPU.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch.utils.weak import WeakIdKeyDictionary

MAX_PARTS = 4  # intra (two parts for a query range starting mid-chunk), near, far


def _jit(*, do_not_specialize=(), do_not_specialize_on_alignment=()):
    """``triton.jit`` that does not specialise on the arguments that change from call to call.

    Triton compiles a variant per combination of "divisible by 16" / "equals 1" over int arguments and of 16-byte
    alignment over pointers. DCA calls these kernels on row ranges of every length and offset, so specialising on
    the row count, the LSE strides (multiples of T) and the LSE / table pointers (row offsets into float32 rows)
    compiled a dozen variants on a first 64k prefill (8 s, measured on an H200). The arguments that stay fixed
    (head dim, row strides) keep their specialisation, which is what vectorises the big loads.
    ``do_not_specialize_on_alignment`` is passed only where this Triton has it (3.2+).
    """
    params = inspect.signature(triton.jit).parameters
    kw = {"do_not_specialize": list(do_not_specialize)}
    if "do_not_specialize_on_alignment" in params:
        kw["do_not_specialize_on_alignment"] = list(do_not_specialize_on_alignment)
    return triton.jit(**kw)


@triton.jit
def _part_lse(l_ptr, lb, lh, lt, b, h, rows, rmask):
    return tl.load(l_ptr + b * lb + h * lh + rows * lt, mask=rmask, other=float("-inf")).to(tl.float32)


@triton.jit
def _part_out(o_ptr, ob, oh, ot, b, h, rows, cols, mask):
    return tl.load(o_ptr + b * ob + h * oh + rows[:, None] * ot + cols[None, :], mask=mask, other=0.0).to(tl.float32)


@_jit(
    do_not_specialize=["T", "slb", "slh", "lb0", "lh0", "lb1", "lh1", "lb2", "lh2", "lb3", "lh3"],
    do_not_specialize_on_alignment=["lse_ptr", "l0", "l1", "l2", "l3"],
)
def _merge_kernel(
    out_ptr, sob, soh, sot,
    lse_ptr, slb, slh, slt,
    o0, ob0, oh0, ot0, l0, lb0, lh0, lt0,
    o1, ob1, oh1, ot1, l1, lb1, lh1, lt1,
    o2, ob2, oh2, ot2, l2, lb2, lh2, lt2,
    o3, ob3, oh3, ot3, l3, lb3, lh3, lt3,
    H, T, D,
    P: tl.constexpr, WRITE_LSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    # one program: BLOCK_T query rows of one (batch, head), all of D; int64 offsets (B*H*T*D may pass 2**31)
    pid_t, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    b, h = pid_bh // H, pid_bh % H
    rows = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < T
    mask = rmask[:, None] & (cols[None, :] < D)
    # pass 1: the LSEs only (a few bytes per row), so that each output tile is then read exactly once
    neg = tl.full([BLOCK_T], float("-inf"), tl.float32)
    s0 = _part_lse(l0, lb0, lh0, lt0, b, h, rows, rmask)
    s1, s2, s3 = neg, neg, neg
    if P > 1:
        s1 = _part_lse(l1, lb1, lh1, lt1, b, h, rows, rmask)
    if P > 2:
        s2 = _part_lse(l2, lb2, lh2, lt2, b, h, rows, rmask)
    if P > 3:
        s3 = _part_lse(l3, lb3, lh3, lt3, b, h, rows, rmask)
    m = tl.maximum(tl.maximum(s0, s1), tl.maximum(s2, s3))
    m = tl.where(m == float("-inf"), 0.0, m)  # a row with every part empty: weights 0, no NaN
    w0, w1, w2, w3 = tl.exp(s0 - m), tl.exp(s1 - m), tl.exp(s2 - m), tl.exp(s3 - m)  # exp(-inf) = 0
    den = w0 + w1 + w2 + w3
    full = den > 0  # padding rows of the block, or a row with every part empty (never in DCA: intra has i itself)
    den = tl.where(full, den, 1.0)
    inv = tl.where(full, 1.0 / den, 0.0)
    # pass 2: o = sum_p exp(lse_p - lse) o_p, in float32
    acc = _part_out(o0, ob0, oh0, ot0, b, h, rows, cols, mask) * (w0 * inv)[:, None]
    if P > 1:
        acc += _part_out(o1, ob1, oh1, ot1, b, h, rows, cols, mask) * (w1 * inv)[:, None]
    if P > 2:
        acc += _part_out(o2, ob2, oh2, ot2, b, h, rows, cols, mask) * (w2 * inv)[:, None]
    if P > 3:
        acc += _part_out(o3, ob3, oh3, ot3, b, h, rows, cols, mask) * (w3 * inv)[:, None]
    dst = out_ptr + b * sob + h * soh + rows[:, None] * sot + cols[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=mask)
    if WRITE_LSE:
        tl.store(lse_ptr + b * slb + h * slh + rows * slt, tl.where(full, m + tl.log(den), float("-inf")), mask=rmask)


def _rows_last(x: torch.Tensor) -> torch.Tensor:
    """The kernels address (b, h, t) by strides and assume unit stride along D."""
    return x if x.stride(-1) == 1 else x.contiguous()


def merge_into(
    out: torch.Tensor, parts: Sequence[tuple[torch.Tensor, torch.Tensor]], *, lse: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """out (B, H, T, D), any strides with unit stride along D  <-  exact LSE merge of ``parts``.

    parts: 1..4 of (o (B, H, T, D), lse (B, H, T)), any dtypes/strides; ``lse`` (B, H, T) float32, written when given.
    Same math as :func:`longctx_dca.kernels.merge`; a row whose parts are all empty gets 0 (the reference: NaN).
    """
    P = len(parts)
    if not 1 <= P <= MAX_PARTS:
        raise ValueError(f"merge_into takes 1..{MAX_PARTS} parts, got {P}")
    if out.stride(-1) != 1:
        raise ValueError("merge_into: out needs unit stride along the last dim")
    B, H, T, D = out.shape
    if T == 0:
        return out
    if P == 1 and lse is None:
        return out.copy_(parts[0][0])  # a plain copy: one launch of PyTorch's copy kernel is cheaper to issue
    args = []
    for o, l in list(parts) + [parts[0]] * (MAX_PARTS - P):  # unused slots: any valid pointer, never read
        o = _rows_last(o)
        args += [o, o.stride(0), o.stride(1), o.stride(2), l, l.stride(0), l.stride(1), l.stride(2)]
    lse_args = [lse, *lse.stride()] if lse is not None else [out, 0, 0, 0]
    BLOCK_D = triton.next_power_of_2(D)
    BLOCK_T = max(1, min(32, 4096 // BLOCK_D, triton.next_power_of_2(T)))  # ~4k elements per program
    grid = (triton.cdiv(T, BLOCK_T), B * H)
    _merge_kernel[grid](
        out, out.stride(0), out.stride(1), out.stride(2), *lse_args, *args, H, T, D,
        P=P, WRITE_LSE=lse is not None, BLOCK_T=BLOCK_T, BLOCK_D=BLOCK_D, num_warps=4,
    )  # fmt: skip
    return out


@_jit(do_not_specialize=["T"], do_not_specialize_on_alignment=["cos_ptr", "sin_ptr"])
def _rope_kernel(
    x_ptr, sxb, sxh, sxt,
    y_ptr, syb, syh, syt,
    cos_ptr, sin_ptr, sct,
    H, T, D,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
):  # fmt: skip
    pid_t, pid_bh = tl.program_id(0), tl.program_id(1).to(tl.int64)  # int64 offsets, as in _merge_kernel
    b, h = pid_bh // H, pid_bh % H
    rows = pid_t.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_HALF)
    mask = (rows < T)[:, None] & (cols < HALF)[None, :]
    tab = rows[:, None] * sct + cols[None, :]
    cos = tl.load(cos_ptr + tab, mask=mask, other=0.0)
    sin = tl.load(sin_ptr + tab, mask=mask, other=0.0)
    src = x_ptr + b * sxb + h * sxh + rows[:, None] * sxt + cols[None, :]
    dst = y_ptr + b * syb + h * syh + rows[:, None] * syt + cols[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    # rotate-half: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin] (the same angle on both halves)
    tl.store(dst, (x1 * cos - x2 * sin).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + HALF, (x2 * cos + x1 * sin).to(y_ptr.dtype.element_ty), mask=mask)
    if BLOCK_PASS > 0:  # partial rotary dim: columns 2*HALF .. D-1 are copied as they are
        pc = 2 * HALF + tl.arange(0, BLOCK_PASS)
        pmask = (rows < T)[:, None] & (pc < D)[None, :]
        xp = tl.load(x_ptr + b * sxb + h * sxh + rows[:, None] * sxt + pc[None, :], mask=pmask)
        tl.store(y_ptr + b * syb + h * syh + rows[:, None] * syt + pc[None, :], xp, mask=pmask)


def rope_tables(delta: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (T, R/2) float32 of ``delta * inv_freq``, computed as ``hf_adapter.Rotary.cos_sin`` does."""
    freqs = delta.to(torch.float32)[:, None] * inv_freq.to(delta.device, torch.float32)[None, :]
    return freqs.cos(), freqs.sin()


#: inv_freq tensor -> {(s, w, device): tables}; a model's RoPE frequencies never change, so its tables are built once
_DCA_TABLES = WeakIdKeyDictionary()


def dca_tables(inv_freq: torch.Tensor, s: int, w: int, device: torch.device) -> tuple[tuple, tuple]:
    """The cos/sin tables of DCA's two query rotations (:func:`longctx_dca.attention.dca_chunked`), cached.

    far (s, R/2): row j is row j of a far block (rows [e·s + w, (e + 1)·s + w)), i.e. ``i' = (w + j) mod s``, rotated
    to ``s + w``: delta ``s + w − i'``. near (1, R/2): delta s, the same for every row with ``i' < w``. Cached so
    that a call launches no set-up kernels (an isolated call otherwise waits on their launches before its first
    attention kernel).
    """
    per = _DCA_TABLES.setdefault(inv_freq, {})
    key = (s, w, torch.device(device))
    if key not in per:
        j = torch.arange(s, device=device)
        far = rope_tables(s + w - (w + j) % s, inv_freq)
        per[key] = far, rope_tables(torch.full((1,), s, device=device), inv_freq)
    return per[key]


def rotate_tables(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by angles whose cos/sin are given: (T, R/2) float32, or (1, R/2) for every row.

    Rotate-half RoPE over the first R dims; the rest of D is copied. Returns a new contiguous tensor in x's dtype;
    x may be any row slice (unit stride along D). Tables let a caller compute them once for many calls.
    """
    B, H, T, D = x.shape
    half = cos.shape[-1]
    if 2 * half > D or cos.shape[0] not in (1, T) or cos.shape != sin.shape:
        raise ValueError(f"rotate: rotary dim {2 * half} vs head dim {D}, tables {tuple(cos.shape)} vs T={T}")
    x = _rows_last(x)
    y = torch.empty((B, H, T, D), dtype=x.dtype, device=x.device)
    if T == 0:
        return y
    cos, sin = cos.contiguous(), sin.contiguous()
    block_half = triton.next_power_of_2(half)
    block_t = max(1, min(32, 2048 // block_half, triton.next_power_of_2(T)))
    block_pass = triton.next_power_of_2(D - 2 * half) if D > 2 * half else 0
    grid = (triton.cdiv(T, block_t), B * H)
    _rope_kernel[grid](
        x, x.stride(0), x.stride(1), x.stride(2), y, y.stride(0), y.stride(1), y.stride(2),
        cos, sin, 0 if cos.shape[0] == 1 else half, H, T, D,
        HALF=half, BLOCK_T=block_t, BLOCK_HALF=block_half, BLOCK_PASS=block_pass, num_warps=4,
    )  # fmt: skip
    return y


def rotate(x: torch.Tensor, delta: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) rotated by ``delta`` (T,) positions (rotate-half RoPE over the first 2*len(inv_freq) dims).

    The fused ``hf_adapter.Rotary.rotate(x.float(), delta).to(x.dtype)``; see :func:`rotate_tables`.
    """
    if delta.shape != (x.shape[2],):
        raise ValueError(f"rotate: delta {tuple(delta.shape)} vs T={x.shape[2]}")
    return rotate_tables(x, *rope_tables(delta, inv_freq))


__all__ = ["dca_tables", "merge_into", "rope_tables", "rotate", "rotate_tables"]
