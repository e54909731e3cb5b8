"""Loading the official RCC_Ins_Reconstruction checkpoint (pythia-1.4b, GPT-NeoX; REFERENCE §4).

The released model is one directory: a GPT-NeoX ``config.json`` and safetensors shards holding the whole model
(its decoder was fine-tuned too), so a pipeline points both the model and the compressor at it::

    model: {source: /models/RCC_Ins_Reconstruction}
    strategy: {name: rcc, ratio: 32, window: 2048, compressor: /models/RCC_Ins_Reconstruction}

Keys (read from the reference's module tree; the loader is strict, as the reference's ``load_state_dict`` is):

- the decoder: ``gpt_neox.*`` and ``embed_out.weight`` (loaded by transformers as the model; transformers 5 calls
  the head ``lm_head`` and renames it on load), plus an unused ``gpt_neox.embed_out.weight``;
- the encoder, a whole GPT-NeoX CausalLM: ``gpt_neox.rcc_encoder.gpt_neox.*`` and ``gpt_neox.rcc_encoder.embed_out.weight``;
- the bridges (no bias): ``gpt_neox.rcc_encoder2gpt_embed.weight`` (H, H) and
  ``gpt_neox.rcc_encoder2gpt_A_matrix.{i}.weight`` (H, H), one per decoder layer.

The reference encodes windows of 2048 tokens at ratio 32 (64 slots a window); shorter or ragged inputs it pads by
repeating the text, which is not done here (a partial window stays raw text, as for every compressor).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from longctx_llm.errors import AdapterError
from longctx_llm.model import hf_adapter

from .compressor import RCCCompressor

PREFIX = "gpt_neox."
ENCODER = "gpt_neox.rcc_encoder."
EMBED_BRIDGE = "gpt_neox.rcc_encoder2gpt_embed.weight"
LAYER_BRIDGE = "gpt_neox.rcc_encoder2gpt_A_matrix.{}.weight"
STRAY = "gpt_neox.embed_out.weight"
WINDOW, RATIO = 2048, 32


def _shards(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".safetensors")


def is_official_layout(path) -> bool:
    p = Path(path).expanduser()
    if not p.is_dir() or (p / "adapter.json").exists() or not (p / "config.json").is_file():
        return False
    from safetensors import safe_open

    for shard in _shards(p):
        try:
            with safe_open(str(shard), "pt") as f:
                if EMBED_BRIDGE in f.keys():
                    return True
        except Exception:  # noqa: BLE001 - not a readable shard: not this layout
            continue
    return False


def read_merged(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for shard in _shards(path):
        try:
            part = load_file(str(shard))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types
            raise AdapterError(f"RCC checkpoint shard {str(shard)!r} is unreadable: {e}") from e
        dup = set(part) & set(out)
        if dup:
            raise AdapterError(f"RCC checkpoint shards repeat keys, e.g. {sorted(dup)[:3]}")
        out.update(part)
    return out


def load_official(path, model) -> RCCCompressor:
    """A full-encoder compressor from an official checkpoint directory, for ``model`` loaded from the same one."""
    from transformers import AutoModelForCausalLM

    p = Path(path).expanduser()
    if model.config.model_type != "gpt_neox":
        raise AdapterError(
            f"{str(p)!r} is an RCC_Ins_Reconstruction checkpoint (GPT-NeoX); the loaded model is "
            f"{model.config.model_type!r}: load the model from that directory too (model.source: {p})"
        )
    cfg = json.loads((p / "config.json").read_text())
    tensors = read_merged(p)
    decoder_keys = {hf_adapter.legacy_name(model, k) for k in model.state_dict()}
    encoder_model = AutoModelForCausalLM.from_config(model.config)
    encoder_keys = {ENCODER + hf_adapter.legacy_name(encoder_model, k) for k in encoder_model.state_dict()}
    n_layers = len(hf_adapter.decoder_layers(model))
    bridges = {EMBED_BRIDGE, *(LAYER_BRIDGE.format(i) for i in range(n_layers))}
    expected = decoder_keys | encoder_keys | bridges | {STRAY}
    missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:3]}")
        if extra:
            parts.append(f"unexpected {len(extra)} key(s), e.g. {extra[:3]}")
        raise AdapterError(f"RCC checkpoint {str(p)!r} does not match the official layout: {'; '.join(parts)}")
    ref = tensors[hf_adapter.legacy_name(model, "lm_head.weight")]
    have = model.get_output_embeddings().weight
    if ref.shape != have.shape or not torch.equal(ref.to(have.dtype).to(have.device), have):
        raise AdapterError(
            f"the loaded model's weights differ from the decoder in RCC checkpoint {str(p)!r} (its decoder was "
            f"fine-tuned): load the model from that directory (model.source: {p})"
        )
    enc_state = {
        hf_adapter.current_name(encoder_model, k[len(ENCODER):]): v for k, v in tensors.items() if k.startswith(ENCODER)
    }
    try:
        encoder_model.load_state_dict(enc_state, strict=True)
    except RuntimeError as e:
        raise AdapterError(f"RCC checkpoint {str(p)!r}: the encoder weights do not fit the config: {e}") from e
    encoder_model.eval()
    comp = RCCCompressor(model, encoder="full", ratio=RATIO, window=WINDOW, encoder_model=encoder_model)
    with torch.no_grad():
        comp.embed_bridge.weight.copy_(tensors[EMBED_BRIDGE])
        for i, b in enumerate(comp.layer_bridges):
            b.weight.copy_(tensors[LAYER_BRIDGE.format(i)])
    comp.card = {"kind": "rcc", "source": "RCC_Ins_Reconstruction (official layout)", "model_type": cfg.get("model_type")}
    return comp
