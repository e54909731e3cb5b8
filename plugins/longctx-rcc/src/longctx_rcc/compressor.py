"""The RCC compressor: an encoder, the bridges into the decoder, and its files (REFERENCE §4).

- **Encoder.** ``lora``: the decoder's own frozen weights plus a LoRA active on every position of an encoder pass
  (what ships for the embedded model: small files, no second copy of the model in memory); ``full``: a separate copy
  of the model (the reference's design, and the official checkpoint's). A window of W tokens is encoded on its own;
  from every hidden state (the embedding output, layers 0..L-2, the final norm of layer L-1: transformers'
  ``output_hidden_states``) the positions ``ratio-1, 2·ratio-1, ...`` are kept: W / ratio slots of L + 1 vectors.
- **Bridges.** ``embed_bridge`` maps a slot's layer-0 vector to the decoder's input embedding at the slot
  position; ``layer_bridges[i]`` maps its vector i + 1 and adds it to the decoder's hidden state at that position
  after decoder layer i (per-layer residual injection). Identity and zero initialised: an untrained compressor
  starts as "the encoder's embedding output, nothing injected".
- **Slot LoRA** (optional, ``slot_rank`` > 0): a conditional LoRA on the decoder active only at slot positions (how
  the slots present their keys/values to the text), as CCM does for its COMP tokens.
- **Reader LoRA** (optional, ``reader_rank`` > 0): a LoRA on the decoder at the text positions of a pass that reads
  slots (the reference trains its decoder too; a frozen decoder reads one key/value per slot per head and can hardly
  spell out the 32 tokens behind it). Text read with no slot before it (a prompt shorter than one window) always runs
  the unchanged model, so such a prompt is answered exactly as plain attention answers it.

Tensors of a longctx adapter directory: ``encoder_lora.layers.{i}.{proj}.lora_{A,B}`` (or ``encoder.{name}`` for
a full encoder), ``embed_bridge`` (H, H), ``layer_bridges.{i}`` (H, H), ``slot_lora.layers...``,
``reader_lora.layers...``. The card's ``config`` holds ``encoder``, ``ratio``, ``window``, ranks and projections.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch import nn

from longctx_llm.errors import AdapterError
from longctx_llm.model import LoRA, hf_adapter
from longctx_llm.model import adapters as files

KIND = "rcc"


class RCCCompressor(nn.Module):
    def __init__(
        self,
        model,
        *,
        encoder: str = "lora",
        ratio: int = 32,
        window: int = 1024,
        encoder_rank: int = 16,
        encoder_projections: Sequence[str] = ("attention",),
        slot_rank: int = 0,
        slot_projections: Sequence[str] = ("attention",),
        reader_rank: int = 0,
        reader_projections: Sequence[str] = ("attention", "mlp"),
        encoder_model=None,
    ):
        super().__init__()
        if encoder not in ("lora", "full"):
            raise AdapterError(f"compressor encoder {encoder!r} is not valid (valid: lora, full)")
        cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        H, L = int(cfg.hidden_size), int(cfg.num_hidden_layers)
        self.encoder_kind, self.ratio, self.window = encoder, int(ratio), int(window)
        self.hidden, self.num_layers = H, L
        self.encoder_lora: Optional[LoRA] = None
        self.encoder: Optional[nn.Module] = None
        if encoder == "lora":
            self.encoder_lora = LoRA(model, encoder_projections, encoder_rank, float(encoder_rank))
        else:
            self.encoder = encoder_model if encoder_model is not None else copy.deepcopy(model)
            hf_adapter.use_longctx_attention(self.encoder)
        self.embed_bridge = nn.Linear(H, H, bias=False)
        with torch.no_grad():
            self.embed_bridge.weight.copy_(torch.eye(H))
        self.layer_bridges = nn.ModuleList(nn.Linear(H, H, bias=False) for _ in range(L))
        for b in self.layer_bridges:
            nn.init.zeros_(b.weight)
        self.slot_lora = LoRA(model, slot_projections, slot_rank, float(slot_rank)) if slot_rank > 0 else None
        self.reader_lora = (
            LoRA(model, reader_projections, reader_rank, float(reader_rank)) if reader_rank > 0 else None
        )
        self.card: dict[str, Any] = {}

    @property
    def config(self) -> dict[str, Any]:
        return {
            "encoder": self.encoder_kind,
            "ratio": self.ratio,
            "window": self.window,
            "encoder_rank": self.encoder_lora.rank if self.encoder_lora is not None else 0,
            "encoder_projections": list(self.encoder_lora.projections) if self.encoder_lora is not None else [],
            "slot_rank": self.slot_lora.rank if self.slot_lora is not None else 0,
            "slot_projections": list(self.slot_lora.projections) if self.slot_lora is not None else [],
            "reader_rank": self.reader_lora.rank if self.reader_lora is not None else 0,
            "reader_projections": list(self.reader_lora.projections) if self.reader_lora is not None else [],
        }

    # ---- the two halves ------------------------------------------------------------------------------------
    def slot_index(self, window: int, device) -> torch.Tensor:
        return torch.arange(self.ratio - 1, window, self.ratio, device=device)  # (W / ratio,)

    def encode(self, model, windows: torch.Tensor) -> torch.Tensor:
        """Slot states (n, W / ratio, L + 1, H) of ``windows`` (n, W), each encoded on its own."""
        index = self.slot_index(windows.shape[1], windows.device)
        if self.encoder is not None:
            return hf_adapter.hidden_states_at(self.encoder, windows, index)
        return hf_adapter.hidden_states_at(model, windows, index, hooks=self.encoder_lora.hooks(None))

    def slot_inputs(self, states: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, P, H) decoder input embeddings of slots from their states (B, P, L + 1, H)."""
        w = self.embed_bridge.weight
        return (states[:, :, 0].to(w.dtype) @ w.t()).to(dtype)

    def decoder_hooks(self, states: torch.Tensor, slots: Optional[int] = None) -> hf_adapter.ForwardHooks:
        """Hooks of a decoder pass whose first ``slots`` positions (all, when None) are these slots (B, P, L+1, H):
        after layer i, add ``layer_bridges[i]`` of state i + 1 there; the slot LoRA at those positions; the reader
        LoRA at the text positions after them."""

        def layer_output(i: int, h: torch.Tensor) -> torch.Tensor:
            bridge = self.layer_bridges[i].weight
            add = (states[:, :, i + 1].to(bridge.dtype) @ bridge.t()).to(h.dtype)  # (B, P, H)
            if slots is None:
                return h + add
            return torch.cat([h[:, :slots] + add, h[:, slots:]], dim=1)

        bridges = hf_adapter.ForwardHooks(layer_output=layer_output)
        slot = None
        if self.slot_lora is not None:
            slot = self.slot_lora.hooks(None if slots is None else torch.arange(slots, device=states.device))
        reader = self.reader_lora.hooks(start=slots) if self.reader_lora is not None and slots is not None else None
        return hf_adapter.combined(bridges, slot, reader)

    def reader_hooks(self) -> Optional[hf_adapter.ForwardHooks]:
        """Hooks of a decoder pass over text that reads slots (None without a reader LoRA)."""
        return self.reader_lora.hooks() if self.reader_lora is not None else None

    def merge_encoder_lora(self, source: "RCCCompressor") -> None:
        """Set this full encoder to the model plus ``source``'s encoder LoRA, merged into the weights (so a full
        encoder can continue from a trained LoRA encoder)."""
        if self.encoder is None or source.encoder_lora is None:
            raise AdapterError("merge_encoder_lora: needs a full encoder here and a LoRA encoder in the source")
        lora = source.encoder_lora
        with torch.no_grad():
            for i in range(lora.num_layers):
                for name in lora.projections:
                    lin = hf_adapter.projection(self.encoder, i, name)
                    a, b = lora.named_weights()[f"layers.{i}.{name}.lora_A"], lora.named_weights()[f"layers.{i}.{name}.lora_B"]
                    lin.weight += (b.float() @ a.float() * lora.scale).to(device=lin.weight.device, dtype=lin.weight.dtype)

    # ---- files -----------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {"embed_bridge": self.embed_bridge.weight}
        for i, b in enumerate(self.layer_bridges):
            out[f"layer_bridges.{i}"] = b.weight
        if self.encoder_lora is not None:
            out.update({f"encoder_lora.{k}": v for k, v in self.encoder_lora.named_weights().items()})
        if self.encoder is not None:
            out.update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})
        if self.slot_lora is not None:
            out.update({f"slot_lora.{k}": v for k, v in self.slot_lora.named_weights().items()})
        if self.reader_lora is not None:
            out.update({f"reader_lora.{k}": v for k, v in self.reader_lora.named_weights().items()})
        return out

    def trainable(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.named_parameters() if v.requires_grad}

    def save(self, directory, card: dict[str, Any], dtype: torch.dtype = torch.bfloat16) -> Path:
        tensors = {k: v.detach().to(dtype) for k, v in self.tensors().items()}
        return files.save_adapter(directory, tensors, {**card, "kind": KIND, "config": self.config})

    @classmethod
    def load(cls, directory, model, fingerprint: Optional[str] = None) -> "RCCCompressor":
        where = repr(str(directory))
        card = files.read_card(directory)
        if card.get("kind") != KIND:
            raise AdapterError(f"{where} holds a {card.get('kind')!r} adapter, not an RCC compressor")
        files.check_base(card, model, fingerprint, where)
        tensors, card = files.load_adapter(directory, kind=KIND)
        config = _checked_config(card.get("config"), tensors, model, where)
        try:
            comp = cls(model, **config)
        except AdapterError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise AdapterError(f"compressor card {where}: bad config {card.get('config')!r:.300}: {e}") from e
        expected = {k: tuple(v.shape) for k, v in comp.tensors().items()}
        files.check_keys(tensors, expected, where)
        comp.load_tensors(tensors)
        comp.card = card
        return comp

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.embed_bridge.weight.copy_(tensors["embed_bridge"])
            for i, b in enumerate(self.layer_bridges):
                b.weight.copy_(tensors[f"layer_bridges.{i}"])
            if self.encoder_lora is not None:
                self.encoder_lora.load_named(
                    {k[len("encoder_lora."):]: v for k, v in tensors.items() if k.startswith("encoder_lora.")}
                )
            if self.encoder is not None:
                self.encoder.load_state_dict(
                    {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}, strict=True
                )
            for prefix, lora in (("slot_lora.", self.slot_lora), ("reader_lora.", self.reader_lora)):
                if lora is not None:
                    lora.load_named({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})


def _checked_config(cfg: Any, tensors: dict[str, torch.Tensor], model, where: str) -> dict[str, Any]:
    """The constructor's arguments from a card's config, checked before the constructor allocates anything from them:
    ranks equal to the LoRA tensors present, ratio and window within the model's trained length, a full encoder's
    tensors present before the model is copied for it."""
    if not isinstance(cfg, dict):
        raise AdapterError(f"compressor card {where}: config is {type(cfg).__name__}, expected an object")
    encoder = cfg.get("encoder")
    if encoder not in ("lora", "full"):
        raise AdapterError(f"compressor card {where}: config.encoder is {encoder!r:.40} (valid: lora, full)")
    text_cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    longest = int(getattr(text_cfg, "max_position_embeddings", 0) or 0) or None
    ratio, window = cfg.get("ratio"), cfg.get("window")
    if type(ratio) is not int or type(window) is not int or not 1 <= ratio <= window or window % ratio:
        raise AdapterError(f"compressor card {where}: config.ratio {ratio!r:.40} and config.window {window!r:.40} "
                           "must be integers with 1 <= ratio <= window and window a multiple of ratio")
    if longest is not None and window > longest:
        raise AdapterError(f"compressor card {where}: config.window is {window}, beyond this model's "
                           f"{longest} positions (valid: {ratio}-{longest})")
    out: dict[str, Any] = {"encoder": encoder, "ratio": ratio, "window": window}
    defaults = {"encoder": ["attention"], "slot": ["attention"], "reader": ["attention", "mlp"]}
    for part, default_targets in defaults.items():
        targets = cfg.get(f"{part}_projections") or default_targets
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise AdapterError(f"compressor card {where}: config.{part}_projections is {targets!r:.80}, expected a "
                               "list of projection names")
        out[f"{part}_projections"] = targets
        if part == "encoder" and encoder == "full":
            if not any(k.startswith("encoder.") for k in tensors):
                raise AdapterError(f"compressor card {where}: config.encoder is 'full', but the weight files hold no "
                                   "encoder.* tensors")
            continue
        rank = files.lora_rank(tensors, f"{part}_lora.")
        held = (f"the weight files hold {part} LoRA tensors of rank {rank}" if rank
                else f"the weight files hold no {part}_lora tensors")
        out[f"{part}_rank"] = files.config_int(cfg, f"{part}_rank", where, rank, held,
                                               minimum=1 if part == "encoder" else 0,
                                               default=rank if part == "encoder" else 0)
    return out


def find_shipped(fingerprint: Optional[str]) -> Optional[Path]:
    """The compressor shipped in this package for the model with this file hash, if any."""
    return files.find_shipped("longctx_rcc", "compressors", fingerprint)
