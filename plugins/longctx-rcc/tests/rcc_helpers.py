"""Helpers of the RCC tests: a tiny model with a random (acting) compressor, and an RCC state on it."""

from __future__ import annotations

import torch

from longctx_rcc.compressor import RCCCompressor
from longctx_rcc.options import RCCOptions
from longctx_rcc.strategy import RCCState


def random_compressor(loaded, ratio=4, window=16, seed=0, **kw) -> RCCCompressor:
    torch.manual_seed(seed)
    kw.setdefault("reader_rank", 4)
    comp = RCCCompressor(loaded.model, ratio=ratio, window=window, encoder_rank=4, slot_rank=4, **kw)
    with torch.no_grad():
        for name, p in comp.named_parameters():
            if "bridge" in name or ".b." in name or name.endswith("lora_B") or "_lora.b" in name:
                p.normal_(0, 0.05)
    return comp.eval()


def state(loaded, comp, window=16, ratio=4, **kw) -> RCCState:
    """An RCC state; ``raw_tail`` 0 unless given (a window compressed as soon as the next one starts)."""
    kw.setdefault("raw_tail", 0)
    return RCCState(loaded, RCCOptions(ratio=ratio, window=window, **kw), comp)
