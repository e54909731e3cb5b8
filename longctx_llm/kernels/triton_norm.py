"""The RMSNorm kernel behind :class:`longctx_llm.kernels.fused_norm.FusedRMSNorm` (CUDA fast path).

One program per row: load the row, sum of squares in float32, scale by ``rsqrt(mean + eps)``, round to the input's
dtype, multiply by the weight (in float32, rounded to the output's dtype). That is the arithmetic of transformers'
Llama / Mistral / Qwen2 / Qwen3 RMSNorm, in one kernel instead of its eight (upcast, square, mean, add, rsqrt,
multiply, downcast, the weight's multiply): at batch 1 those are a large share of a decode step's launches.

Importing this module imports Triton; with ``TRITON_INTERPRET=1`` it also runs on CPU tensors (the tests).
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(X, W, Y, stride_x, stride_y, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row * stride passes 2**31 on long prefills of large models
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x * x, axis=0) / N
    y = (x * tl.rsqrt(mean + eps)).to(X.dtype.element_ty)  # rounded to the input dtype, as HF
    w = tl.load(W + cols, mask=mask, other=0.0)
    out = w.to(tl.float32) * y.to(tl.float32)
    tl.store(Y + row * stride_y + cols, out.to(Y.dtype.element_ty), mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * (x * rsqrt(mean(x²) + eps)).to(x.dtype)`` over the last dimension, in one kernel."""
    n = x.shape[-1]
    rows = x.reshape(-1, n)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    if rows.shape[0]:
        # Triton launches on the current device: make it the tensor's (a model on cuda:1)
        with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
            _rms_norm_kernel[(rows.shape[0],)](
                rows, weight, out, rows.stride(0), out.stride(0), n, float(eps), BLOCK=triton.next_power_of_2(n),
            )
    return out.reshape(*x.shape[:-1], n)
