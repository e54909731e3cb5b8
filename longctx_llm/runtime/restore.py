"""Checks of a saved state's numbers when a session is restored (the files are untrusted).

A state's ``load_state_dict`` reads its counters with :func:`meta_int`, bounded by what its saved tensors hold (a
cache of 12 entries cannot have seen 10^9 tokens), so a forged or damaged ``strategy_meta`` is a
:class:`~longctx_llm.errors.SessionError` on restore instead of a session that silently answers differently.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import SessionError


def meta_int(meta: Any, key: str, low: int, high: int, what: str, why: Optional[str] = None) -> int:
    """``meta[key]``, an integer from ``low`` to ``high`` (``why`` says where the bounds come from)."""
    value = meta.get(key) if isinstance(meta, dict) else None
    if type(value) is not int or not low <= value <= high:
        text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        valid = f"{low}" if low == high else f"{low}-{high}"
        raise SessionError(f"saved {what} state: {key} is {text}{f', but {why}' if why else ''} (valid: {valid})")
    return value


def cache_length(tensors: dict[str, torch.Tensor]) -> int:
    """Entries held by a saved key/value cache: the length of its ``layer{i}.keys`` (B, H, T, D); 0 if none.
    Every layer must hold the same number."""
    lengths = {int(t.shape[-2]) for k, t in tensors.items()
               if k.startswith("layer") and k.endswith(".keys") and t.dim() == 4}
    if len(lengths) > 1:
        raise SessionError(f"saved cache layers hold different numbers of entries: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def check_positions(real_tokens: Any, batch_size: int, seen: int, what: str) -> torch.Tensor:
    """A saved ``real_tokens`` (B,) integer tensor: one count per row, each from 0 to ``seen``."""
    if not isinstance(real_tokens, torch.Tensor) or tuple(real_tokens.shape) != (batch_size,) \
            or real_tokens.is_floating_point() or real_tokens.is_complex():
        shape = tuple(real_tokens.shape) if isinstance(real_tokens, torch.Tensor) else type(real_tokens).__name__
        raise SessionError(f"saved {what} state: real_tokens is {shape}, expected {batch_size} integer count(s)")
    if batch_size and not (0 <= int(real_tokens.min()) and int(real_tokens.max()) <= seen):
        raise SessionError(f"saved {what} state: real_tokens {real_tokens.tolist()[:4]} outside 0-{seen} (the "
                           "tokens its cache has seen)")
    return real_tokens
