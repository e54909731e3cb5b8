"""The CCM adapter: COMP token embeddings plus a conditional LoRA (REFERENCE §3), and its files.

Tensors of a longctx adapter directory (``longctx_llm.model.adapters``)::

    comp_embeddings                       (n_comp, hidden)  input embeddings of COMP tokens 0..n_comp-1
    lora.layers.{i}.{projection}.lora_A   (r, in)
    lora.layers.{i}.{projection}.lora_B   (out, r)

The card's ``config`` holds ``rank``, ``alpha``, ``projections``, ``n_comp`` and what the adapter was trained for
(``modes``, ``comp_tokens``). A memory asking for a mode or slot count the adapter was not trained for is refused:
untrained COMP slots make answers worse than no memory (ARCHITECTURE.md: perplexity 130 against 31.8 without).

The reference's released adapters (LLaMA-7B family, a PEFT LoRA plus COMP embeddings) load through
:func:`load_reference` (see ``reference.py``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from longctx_llm.errors import AdapterError
from longctx_llm.model import LoRA, hf_adapter
from longctx_llm.model import adapters as files

KIND = "ccm"


class CCMAdapter(nn.Module):
    """COMP embeddings (n_comp, H) and a LoRA applied only at COMP positions."""

    def __init__(
        self,
        model,
        *,
        n_comp: int = 8,
        rank: int = 16,
        alpha: float = 16.0,
        dropout: float = 0.0,
        projections: Sequence[str] = ("attention",),
        modes: Sequence[str] = ("concat",),
        comp_tokens: Sequence[int] = (2,),
    ):
        super().__init__()
        emb = hf_adapter.input_embeddings(model).weight
        # initialised from the mean of the vocabulary rows, as in the reference
        self.comp_embeddings = nn.Parameter(emb.detach().float().mean(0, keepdim=True).repeat(n_comp, 1).clone())
        self.lora = LoRA(model, projections, rank, alpha, dropout)
        self.n_comp = int(n_comp)
        self.modes = tuple(modes)
        self.comp_tokens = tuple(int(k) for k in comp_tokens)
        self.card: dict[str, Any] = {}

    @property
    def config(self) -> dict[str, Any]:
        return {
            "n_comp": self.n_comp,
            "rank": self.lora.rank,
            "alpha": self.lora.alpha,
            "dropout": self.lora.dropout,
            "projections": list(self.lora.projections),
            "modes": list(self.modes),
            "comp_tokens": list(self.comp_tokens),
        }

    def embeddings(self, k: int, dtype: torch.dtype) -> torch.Tensor:
        """(k, H) input embeddings of the first k COMP tokens."""
        return self.comp_embeddings[:k].to(dtype)

    def hooks(self, index: Optional[torch.Tensor] = None) -> hf_adapter.ForwardHooks:
        """The conditional LoRA: at positions ``index`` of the call (None: every position, i.e. a COMP-only call)."""
        return self.lora.hooks(index)

    def check_usable(self, mode: str, k: int, where: str) -> None:
        if mode not in self.modes:
            raise AdapterError(
                f"memory.mode: {mode!r} is not a mode adapter {where} was trained for (trained: {', '.join(self.modes)})"
            )
        if k > self.n_comp or (self.comp_tokens and k not in self.comp_tokens):
            trained = ", ".join(str(c) for c in self.comp_tokens)
            raise AdapterError(
                f"memory.comp_tokens: {k} is not a slot count adapter {where} was trained for (trained: {trained})"
            )

    # ---- files -----------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"comp_embeddings": self.comp_embeddings}
        out.update({f"lora.{k}": v for k, v in self.lora.named_weights().items()})
        return out

    def save(self, directory, card: dict[str, Any], dtype: torch.dtype = torch.bfloat16) -> Path:
        tensors = {k: v.detach().to(dtype) for k, v in self.tensors().items()}
        return files.save_adapter(directory, tensors, {**card, "kind": KIND, "config": self.config})

    @classmethod
    def load(cls, directory, model, fingerprint: Optional[str] = None) -> "CCMAdapter":
        """Load an adapter directory for ``model`` (a transformers model), checking base model, keys and shapes."""
        where = repr(str(directory))
        card = files.read_card(directory)
        if card.get("kind") != KIND:
            raise AdapterError(f"{where} holds a {card.get('kind')!r} adapter, not a CCM one")
        files.check_base(card, model, fingerprint, where)
        tensors, card = files.load_adapter(directory, kind=KIND)
        config = _checked_config(card.get("config"), tensors, where)
        try:
            adapter = cls(model, **config)
        except AdapterError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterError(f"adapter card {where}: bad config {card.get('config')!r:.300}: {e}") from e
        expected = {k: tuple(v.shape) for k, v in adapter.tensors().items()}
        files.check_keys(tensors, expected, where)
        with torch.no_grad():
            adapter.comp_embeddings.copy_(tensors["comp_embeddings"].float())
            adapter.lora.load_named({k[len("lora."):]: v for k, v in tensors.items() if k.startswith("lora.")})
        adapter.card = card
        return adapter


def _checked_config(cfg: Any, tensors: dict[str, torch.Tensor], where: str) -> dict[str, Any]:
    """The constructor's arguments from a card's config, checked against the tensors present before the constructor
    allocates anything from them (a rank of -1 or 10^9 COMP tokens is an AdapterError naming the value)."""
    if not isinstance(cfg, dict):
        raise AdapterError(f"adapter card {where}: config is {type(cfg).__name__}, expected an object")
    emb = tensors.get("comp_embeddings")
    rows = int(emb.shape[0]) if emb is not None and emb.dim() == 2 else 0
    rank = files.lora_rank(tensors, "lora.")
    held = f"the weight files hold {rows} COMP embeddings" if rows else "the weight files hold no comp_embeddings"
    n_comp = files.config_int(cfg, "n_comp", where, rows, held)
    held = f"the weight files hold LoRA tensors of rank {rank}" if rank else "the weight files hold no LoRA tensors"
    files.config_int(cfg, "rank", where, rank, held)
    projections = cfg.get("projections")
    if not isinstance(projections, list) or not projections or not all(isinstance(p, str) for p in projections):
        raise AdapterError(f"adapter card {where}: config.projections is {projections!r:.80}, expected a list of "
                           "projection names")
    alpha = cfg.get("alpha")
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterError(f"adapter card {where}: config.alpha is {alpha!r:.40}, expected a finite number > 0")
    return {"n_comp": n_comp, "rank": rank, "alpha": float(alpha), "projections": projections,
            "modes": list(cfg.get("modes", ["concat"])), "comp_tokens": list(cfg.get("comp_tokens", []))}


def find_shipped(fingerprint: Optional[str]) -> Optional[Path]:
    """The adapter shipped in this package for the model with this file hash, if any."""
    return files.find_shipped("longctx_ccm", "adapters", fingerprint)
