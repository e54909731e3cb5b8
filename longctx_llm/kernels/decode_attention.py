"""One new query per row against a preallocated cache: the attention of a fixed decode step.

A decode step at batch 1 is memory-bound: the whole cache is read once per layer for one query. The stock kernels
parallelise over (batch, heads) only, so at batch 1 a 64k cache is streamed by 32 thread blocks on a GPU with
132 SMs (0.29 of the bandwidth bound, benchmarks/RESULTS.md). :func:`attend` splits the keys instead (flash-decoding):
each Triton program reads one slice of one key/value head for all the query heads that share it, and the slices'
partial softmaxes are merged exactly by their log-sum-exp.

It also takes *piecewise* queries, which is what makes DCA's decode one call: ``q`` carries P versions of each
query (DCA: rotated at the intra, successive and inter positions), and key ``j`` is scored by version

    0 for j >= bounds[0],   1 for bounds[1] <= j < bounds[0],   2 for j < bounds[1]

so the three partial attentions of DCA become one pass over the keys (each key read once) whose softmax is, exactly,
their log-sum-exp merge. Plain attention is P = 1.

The valid key range of each row, ``[first, valid)``, and the bounds are device tensors, so the call is the same GPU
program from step to step (it replays from a CUDA graph). On CPU, or without Triton, :func:`attend_reference` does
the same in float32 PyTorch; it is also what the kernel is tested against.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

logger = logging.getLogger(__name__)

#: (cos, sin, factor): per row and version, the angles (B, P, R/2) float32 and scale (B, P) or None of a query
Rotation = tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]

#: (device type, dtype) pairs on which the Triton kernel failed once (PyTorch ops are used there from then on)
_TRITON_OFF: set = set()


@torch.compiler.disable  # a compiled decode step calls it as is: Inductor does not build this user kernel
def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    valid: torch.Tensor,
    first: Optional[torch.Tensor] = None,
    bounds: Optional[torch.Tensor] = None,
    scale: float,
    rotation: Optional[Rotation] = None,
    triton: Optional[bool] = None,
) -> torch.Tensor:
    """Attention of one query per row and head over keys ``[first, valid)``; returns (B, H, 1, D) in q's dtype.

    q (B, P, H, D): P versions of each query head (P = 1: plain attention); k/v (B, H_kv, N, D) with H a multiple
    of H_kv (grouped-query heads: query head h reads key head h // (H / H_kv)); valid/first (B,) int; bounds (B, 2)
    int, key j scored by version 0 / 1 / 2 as in the module docstring, versions past P − 1 scoring as P − 1 (None:
    version 0 everywhere).
    ``rotation``: (cos, sin, factor) — the versions are made from one query q (B, 1, H, D): version p of row b is q
    rotated (rotate-half RoPE over the first 2·R2 dims, float32) by the angles whose cos/sin are (B, P, R2) float32,
    then scaled by factor (B, P) (None: 1), and cast to q's dtype.
    ``triton``: None = on CUDA tensors when Triton imports; True = always (CPU needs ``TRITON_INTERPRET=1``).
    """
    B = q.shape[0]
    if first is None:
        first = torch.zeros_like(valid)
    if bounds is None:
        bounds = _zero_bounds(B, valid.device)
    if triton is not False and (triton or q.is_cuda) and (q.device.type, q.dtype) not in _TRITON_OFF:
        try:
            from . import triton_decode
        except ImportError:
            if triton:
                raise
        else:
            try:
                return triton_decode.attend(q, k, v, valid=valid, first=first, bounds=bounds, scale=scale,
                                            rotation=rotation)
            except torch.OutOfMemoryError:
                raise  # the request's problem, reported as such (not a reason to give up the kernel)
            except Exception as exc:  # a Triton that cannot build the kernel here: PyTorch from now on
                if triton:
                    raise
                _TRITON_OFF.add((q.device.type, q.dtype))
                logger.warning("decode attention: Triton kernel failed on %s/%s (%s: %s); using PyTorch ops",
                               q.device, q.dtype, type(exc).__name__, exc)
    if rotation is not None:
        q = rotated_versions(q, *rotation)
    return attend_reference(q, k, v, valid=valid, first=first, bounds=bounds, scale=scale)


#: (B, device) -> a (B, 2) zero bounds tensor (plain attention asks for one per layer and step)
_ZERO_BOUNDS: dict = {}


def _zero_bounds(batch: int, device: torch.device) -> torch.Tensor:
    key = (batch, device)
    t = _ZERO_BOUNDS.get(key)
    if t is None:
        t = _ZERO_BOUNDS[key] = torch.zeros(batch, 2, dtype=torch.int32, device=device)
    return t


def rotated_versions(q: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, factor: Optional[torch.Tensor]):
    """(B, P, H, D) versions of q (B, 1, H, D) as ``rotation`` in :func:`attend` describes (the kernel's reference)."""
    half = cos.shape[-1]
    x = q.float()  # (B, 1, H, D)
    xr, xp = x[..., : 2 * half], x[..., 2 * half :]
    c = cos.float()[:, :, None, :].repeat(1, 1, 1, 2)  # (B, P, 1, 2·R2)
    s = sin.float()[:, :, None, :].repeat(1, 1, 1, 2)
    rot = xr * c + torch.cat((-xr[..., half:], xr[..., :half]), dim=-1) * s  # (B, P, H, 2·R2)
    out = torch.cat((rot, xp.expand(-1, rot.shape[1], -1, -1)), dim=-1)
    if factor is not None:
        out = out * factor.float()[:, :, None, None]
    return out.to(q.dtype)


def version_of_keys(n: int, bounds: torch.Tensor) -> torch.Tensor:
    """(B, N) version index (0, 1, 2) that scores each key position, from bounds (B, 2)."""
    j = torch.arange(n, device=bounds.device)[None, :]
    b0, b1 = bounds[:, :1], bounds[:, 1:]
    return torch.where(j >= b0, 0, torch.where(j >= b1, 1, 2))


def attend_reference(q, k, v, *, valid, first, bounds, scale: float) -> torch.Tensor:
    """:func:`attend` in float32 PyTorch (any device); the kernel's reference."""
    B, P, H, D = q.shape
    Hkv, N = k.shape[1], k.shape[2]
    G = H // Hkv
    qf = q.float().reshape(B, P, Hkv, G, D)
    s = torch.einsum("bpkgd,bknd->bpkgn", qf, k.float()) * scale  # (B, P, Hkv, G, N)
    if P > 1:
        ver = version_of_keys(N, bounds).clamp_max(P - 1)  # (B, N)
        idx = ver[:, None, None, None, :].expand(B, 1, Hkv, G, N)
        s = s.gather(1, idx)
    s = s[:, 0]  # (B, Hkv, G, N)
    j = torch.arange(N, device=k.device)[None, :]
    ok = (j >= first[:, None].long()) & (j < valid[:, None].long())  # (B, N)
    s = s.masked_fill(~ok[:, None, None, :], float("-inf"))
    p = torch.softmax(s, dim=-1)
    out = torch.einsum("bkgn,bknd->bkgd", p, v.float())  # (B, Hkv, G, D)
    return out.reshape(B, H, 1, v.shape[-1]).to(q.dtype)
