"""The preallocated per-layer key/value buffers both cache layouts (ring, shift) are built on."""

from __future__ import annotations

from typing import Optional

import torch


class SinkBuffers:
    """One (B, H, S + W, D) key buffer and one value buffer per layer, allocated on first write, saved up to ``filled``.

    Subclasses decide where tokens go (``plan``/``update``); this holds what is the same for every layout: the
    buffers, the parts of transformers' ``Cache`` the models call besides ``update``, and saving.
    """

    def __init__(self, num_layers: int, sink: int, window: int, rotary, device):
        self.num_layers = num_layers
        self.sink, self.window = sink, window
        self.capacity = sink + window
        self.rotary = rotary  # longctx_llm.model.hf_adapter.Rotary
        self.device = torch.device(device)
        self.keys: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, S+W, D) each
        self.values: list[Optional[torch.Tensor]] = [None] * num_layers  # (B, H, S+W, Dv) each
        self.filled = 0  # tokens held, <= S + W
        self.evicted = 0  # tokens dropped so far

    def _buffers(self, layer_idx: int, key_states: torch.Tensor, value_states: torch.Tensor):
        """The layer's buffers, allocated like the first keys/values written to them."""
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if k is None:
            B, H, _, D = key_states.shape
            k = key_states.new_zeros(B, H, self.capacity, D)  # (B, H, S+W, D)
            v = value_states.new_zeros(B, H, self.capacity, value_states.shape[-1])  # (B, H, S+W, Dv)
            self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def _rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotate (B, H, T, D) keys by ``delta`` positions in float32 (bf16 angles would lose precision)."""
        return self.rotary.rotate(x.float(), delta).to(x.dtype)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.filled

    def __len__(self) -> int:
        return self.num_layers

    # ---- saving --------------------------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(self.num_layers):
            if self.keys[i] is not None:
                out[f"layer{i}.keys"] = self.keys[i][:, :, : self.filled]
                out[f"layer{i}.values"] = self.values[i][:, :, : self.filled]
        return out

    def meta(self) -> dict[str, int]:
        return {"filled": self.filled, "evicted": self.evicted}

    def load(self, tensors: dict[str, torch.Tensor], meta: dict[str, int]) -> None:
        self.filled, self.evicted = int(meta["filled"]), int(meta["evicted"])
        for i in range(self.num_layers):
            k = tensors.get(f"layer{i}.keys")
            if k is None:
                continue
            v = tensors[f"layer{i}.values"]
            B, H, n, D = k.shape
            self.keys[i] = k.new_zeros(B, H, self.capacity, D, device=self.device)  # (B, H, S+W, D)
            self.values[i] = v.new_zeros(B, H, self.capacity, v.shape[-1], device=self.device)
            self.keys[i][:, :, :n] = k.to(self.device)
            self.values[i][:, :, :n] = v.to(self.device)
