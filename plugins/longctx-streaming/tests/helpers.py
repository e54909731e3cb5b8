"""Shared helpers of the streaming tests: an independent dense reference of the sink + window policy."""

from __future__ import annotations

import torch


def dense_reference_logits(model, ids: list[int], sink: int, window: int, piece: int) -> torch.Tensor:
    """(n, V) logits of a one-layer model that sees, for each token, exactly the tokens the policy keeps.

    With one layer a token's keys/values depend only on its own embedding, so running the plain model on the kept
    tokens, at positions 0..k-1, is the dense reference with the same cache-local positions: no cache involved.
    """
    kept: list[int] = []
    out = []
    for start in range(0, len(ids), piece):
        chunk = ids[start : start + piece]
        if len(kept) + len(chunk) > sink + window:  # evict the oldest window tokens to make room
            drop = len(kept) + len(chunk) - sink - window
            kept = kept[:sink] + kept[sink + drop :]
        for i in range(len(chunk)):
            seq = torch.tensor([kept + chunk[: i + 1]], device=model.device)
            out.append(model.model(seq).logits[0, -1])
        kept = kept + chunk
    return torch.stack(out)
