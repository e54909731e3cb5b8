"""The parallel training forward of CCM: a whole multi-turn sample in one pass (REFERENCE §3).

A sample is N text segments ``s_0 .. s_{N-1}``; after each but the last come ``k`` COMP tokens ``c_i``::

    sequence:  s_0 c_0 s_1 c_1 ... s_{N-2} c_{N-2} s_{N-1}

Each unit (``s_i`` and ``c_i``) sees its own text causally plus the memory made of earlier units' COMP tokens, as
the turn-by-turn inference path (``memory.py``) sees it, with the same positions:

- concat: unit i sees ``c_0 .. c_{i-1}`` as ``i·k`` slots at positions ``0 .. i·k-1``; ``s_i`` sits at ``i·k``,
  ``c_i`` right after ``s_i``;
- merge: unit i ≥ 1 sees ``k`` slots at ``0 .. k-1``, the mean of ``c_0 .. c_{i-1}``; ``s_i`` sits at ``k``.

A COMP token's key is computed at its own position (after its turn) and read by later units at its slot position,
so the attention function below re-rotates the COMP keys by the same shift that ``compact_tail`` applies at
inference, and appends them (merge: their running means) as extra keys that only later units may see. The mask is
dense: T is a few hundred tokens in training. Only this mask and the loss are training-specific; the model, the
hooks (conditional LoRA at the COMP positions) and the positions are the inference path's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from longctx_llm.model import hf_adapter
from longctx_llm.train import distill

from .adapter import CCMAdapter


@dataclass
class Layout:
    """Where each token of a sample sits (shared by every row of a batch)."""

    seg_lens: tuple[int, ...]
    k: int
    mode: str = "concat"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        N, k = len(self.seg_lens), self.k
        if N < 2:
            raise ValueError("a CCM sample needs at least 2 segments")
        pos, unit, comp, text_idx, shift = [], [], [], [], []
        t = 0
        for i, n in enumerate(self.seg_lens):
            base = i * k if self.mode == "concat" else (k if i else 0)
            text_idx.append(list(range(t, t + n)))
            pos += [base + j for j in range(n)]
            unit += [i] * n
            t += n
            if i < N - 1:
                comp += list(range(t, t + k))
                pos += [base + n + j for j in range(k)]
                unit += [i] * k
                # slot position of c_i's j-th key: concat base + j (i.e. -n); merge j (i.e. -(base + n))
                shift += [-n if self.mode == "concat" else -(base + n)] * k
                t += k
        dev = self.device
        self.length = t
        self.position_ids = torch.tensor(pos, device=dev)  # (T,)
        self.unit = torch.tensor(unit, device=dev)  # (T,)
        self.comp_idx = torch.tensor(comp, dtype=torch.long, device=dev)  # (C,) C = (N-1)k
        self.comp_shift = torch.tensor(shift, device=dev)  # (C,)
        self.text_idx = [torch.tensor(x, device=dev) for x in text_idx]
        # main mask (T, T): same unit, causal; extra mask (T, C): the memory each unit reads
        u = self.unit
        q = torch.arange(t, device=dev)
        main = (u[:, None] == u[None, :]) & (q[None, :] <= q[:, None])
        block = torch.arange(N - 1, device=dev).repeat_interleave(k)  # (C,) the turn each extra key comes from
        if self.mode == "concat":
            extra = block[None, :] < u[:, None]
        else:
            extra = block[None, :] == (u[:, None] - 1)
        self.mask = torch.cat([main, extra], dim=1)  # (T, T + C)

    def embed(self, model, adapter: CCMAdapter, ids: torch.Tensor) -> torch.Tensor:
        """(B, T, H) input embeddings: text tokens from ``ids`` (B, sum(seg_lens)), COMP tokens from the adapter."""
        B = ids.shape[0]
        emb_layer = hf_adapter.input_embeddings(model)
        text = emb_layer(ids)  # (B, L, H)
        out = text.new_zeros(B, self.length, text.shape[-1])
        text_pos = torch.cat(self.text_idx)
        out = out.index_copy(1, text_pos, text)
        comp = adapter.embeddings(self.k, text.dtype).to(text.device)  # (k, H)
        comp = comp.repeat(len(self.seg_lens) - 1, 1)[None].expand(B, -1, -1)
        return out.index_copy(1, self.comp_idx, comp)


def parallel_attention(module, query, key, value, ctx, *, scaling, dropout=0.0, **kwargs):
    """Attention over the sample plus its COMP keys re-rotated to slot positions (merge: running means)."""
    layout: Layout = ctx.extra["ccm_layout"]
    rot: hf_adapter.Rotary = ctx.extra["ccm_rotary"]
    idx = layout.comp_idx
    ck = rot.rotate(key[:, :, idx].float(), layout.comp_shift).to(key.dtype)  # (B, Hkv, C, D)
    cv = value[:, :, idx]
    if layout.mode == "merge":
        B, H, C, D = ck.shape
        turns = C // layout.k
        denom = torch.arange(1, turns + 1, device=ck.device, dtype=torch.float32)[None, None, :, None, None]
        ck = (ck.float().reshape(B, H, turns, layout.k, D).cumsum(2) / denom).reshape(B, H, C, D).to(key.dtype)
        cv = (cv.float().reshape(B, H, turns, layout.k, D).cumsum(2) / denom).reshape(B, H, C, D).to(value.dtype)
    record = ctx.extra.get("ccm_record")
    if record is not None:
        record.append((ck.detach(), cv.detach()))
    k_all = torch.cat([key, ck], dim=2)
    v_all = torch.cat([value, cv], dim=2)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, k_all, v_all, attn_mask=layout.mask[None, None], scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
    )
    return out.transpose(1, 2).contiguous()


def parallel_hidden(
    model, adapter: CCMAdapter, ids: torch.Tensor, layout: Layout, record: Optional[list] = None
) -> torch.Tensor:
    """Final hidden states (B, T, H) of a batch of samples ``ids`` (B, sum(seg_lens)) laid out by ``layout``."""
    B = ids.shape[0]
    embeds = layout.embed(model, adapter, ids)
    pos = layout.position_ids[None].expand(B, -1)
    rot = hf_adapter.Rotary(inv_freq=hf_adapter.rotary_module(model).inv_freq.detach().float().to(ids.device))
    extra = {"ccm_layout": layout, "ccm_rotary": rot}
    if record is not None:
        extra["ccm_record"] = record
    ctx = hf_adapter.AttentionContext(q_positions=pos, attention=parallel_attention, extra=extra)
    with hf_adapter.installed(model, adapter.hooks(layout.comp_idx)):
        out = hf_adapter.decoder(model)(inputs_embeds=embeds, position_ids=pos, use_cache=False, longctx=ctx)
    return out.last_hidden_state


def _rows(layout: Layout, segments: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For the tokens 1.. of the given segments: where their predicting token sits in the layout, and in ``ids``."""
    starts = [0]
    for n in layout.seg_lens:
        starts.append(starts[-1] + n)
    h_idx = torch.cat([layout.text_idx[i][:-1] for i in segments])
    src = torch.cat([torch.arange(starts[i], starts[i + 1] - 1, device=h_idx.device) for i in segments])
    return h_idx, src


def segment_nll(model, hidden: torch.Tensor, ids: torch.Tensor, layout: Layout, segments: Sequence[int]) -> torch.Tensor:
    """Per-token NLL (B, n_tokens) of tokens 1.. of the given segments, each predicted inside its own unit."""
    h_idx, src = _rows(layout, segments)
    logits = model.get_output_embeddings()(hidden[:, h_idx]).float()  # (B, M, V)
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, src + 1], reduction="none")  # (B, M)


def distilled_loss(model, hidden: torch.Tensor, ids: torch.Tensor, layout: Layout, segments: Sequence[int],
                   weight: float, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(1 - weight)·NLL + weight·KL(teacher ‖ memory)`` over tokens 1.. of the given segments, and its two parts.

    The teacher (:mod:`longctx_llm.train.distill`) is the model itself with the whole sample as plain text in its
    context: no slots, no adapter, ordinary positions.
    """
    h_idx, src = _rows(layout, segments)
    teacher = distill.teacher_hidden(model, ids)[:, src]
    nll, kl = distill.nll_and_kl(model.get_output_embeddings(), hidden[:, h_idx], teacher, ids[:, src + 1], chunk)
    return distill.mixed(nll, kl, weight), nll.detach(), kl.detach()
