"""Low-rank weight deltas applied per call, at chosen positions (a conditional LoRA).

CCM's compression tokens and RCC's encoder run the frozen model with a LoRA delta on some projections. Nothing is
patched: :meth:`LoRA.hooks` returns :class:`~longctx_llm.model.hf_adapter.ForwardHooks` for one forward call, and the
delta ``x A^T B^T · alpha / r`` is added to each listed projection's output only at the positions the call names
(CCM: the COMP tokens; REFERENCE §3), or everywhere (an encoder pass).

Weights are named ``layers.{i}.{projection}.lora_A`` (r, in) and ``.lora_B`` (out, r), the projection names of
:data:`longctx_llm.model.hf_adapter.PROJECTIONS`. ``lora_B`` starts at zero, so an untrained LoRA changes nothing.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from . import hf_adapter


def _key(layer: int, name: str) -> str:
    return f"l{layer}_{name.replace('.', '__')}"  # parameter names cannot hold dots


class LoRA(nn.Module):
    """Rank-``r`` deltas on ``projections`` of every decoder layer of one model."""

    def __init__(self, model, projections: Sequence[str], rank: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.projections = hf_adapter.projection_names(model, projections)
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.scale = self.alpha / self.rank
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        for i, _layer in enumerate(hf_adapter.decoder_layers(model)):
            for name in self.projections:
                lin = hf_adapter.projection(model, i, name)
                a = torch.empty(self.rank, lin.in_features)
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                self.a[_key(i, name)] = nn.Parameter(a)
                self.b[_key(i, name)] = nn.Parameter(torch.zeros(lin.out_features, self.rank))
        self.num_layers = len(hf_adapter.decoder_layers(model))

    # ---- file layout ---------------------------------------------------------------------------------------
    def named_weights(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(self.num_layers):
            for name in self.projections:
                out[f"layers.{i}.{name}.lora_A"] = self.a[_key(i, name)]
                out[f"layers.{i}.{name}.lora_B"] = self.b[_key(i, name)]
        return out

    def load_named(self, tensors: dict[str, torch.Tensor]) -> None:
        for key, param in self.named_weights().items():
            t = tensors[key]
            if t.shape != param.shape:
                raise ValueError(f"{key}: shape {tuple(t.shape)} does not match the model's {tuple(param.shape)}")
            with torch.no_grad():
                param.copy_(t.to(param.dtype))

    # ---- the per-call delta --------------------------------------------------------------------------------
    def delta(self, layer: int, name: str, x: torch.Tensor) -> torch.Tensor:
        k = _key(layer, name)
        a, b = self.a[k], self.b[k]
        if self.training and self.dropout:
            x = nn.functional.dropout(x, self.dropout)
        return (x.to(a.dtype) @ a.t()) @ b.t() * self.scale

    def hooks(self, index: Optional[torch.Tensor] = None, start: Optional[int] = None,
              rows: Optional[torch.Tensor] = None) -> hf_adapter.ForwardHooks:
        """Hooks adding the delta at positions ``index`` (T_sel,) of every row, at positions ``start..`` of every
        row, or everywhere when both are None; ``rows`` (B,) bool: everywhere, on those rows only (the others'
        outputs unchanged, bit for bit)."""
        if sum(a is not None for a in (index, start, rows)) > 1:
            raise ValueError("LoRA.hooks: give at most one of index, start, rows")

        def projection(layer: int, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
            if rows is not None:
                d = self.delta(layer, name, x).to(out.dtype)
                return torch.where(rows[:, None, None], out + d, out)
            if start is not None:
                d = self.delta(layer, name, x[:, start:]).to(out.dtype)
                return torch.cat([out[:, :start], out[:, start:] + d], dim=1)
            if index is None:
                return out + self.delta(layer, name, x).to(out.dtype)
            d = self.delta(layer, name, x[:, index]).to(out.dtype)  # (B, T_sel, out)
            return out.index_add(1, index, d)

        everywhere = index is None and start is None and rows is None  # the same program every call: replayable
        return hf_adapter.ForwardHooks(projections=self.projections, projection=projection,
                                       replay_key=("lora", id(self)) if everywhere else None)
