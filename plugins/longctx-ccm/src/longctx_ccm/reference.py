"""Loading the reference implementation's released CCM adapters (LLaMA-7B / LLaMA-2-7B-chat / Mistral-7B).

The reference saves a PEFT LoRA state dict plus the COMP embeddings (its ``get_peft_model_state_dict`` with the
adapter name dropped) as ``pytorch_model.bin`` or ``model.safetensors`` beside an ``adapter_config.json``::

    base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_A.weight   (r, in)
    base_model.model.model.layers.{i}.self_attn.{q,k,v,o}_proj.lora_B.weight   (out, r)
    base_model.model.model.embed_tokens.comp_embeddings.weight                (n or 2n, hidden)

(``gist_embeddings`` is an older name of the last key; ``.default`` may follow ``lora_A``/``lora_B``.) Merge
adapters hold 2n rows (n COMP, then n SUM tokens whose embeddings are never used): a directory whose name says
``merge`` is read as a merge adapter with the first n rows, any other as concat with all rows.

Loading is strict: every key must be one of the above, and every layer must have every projection. ``.bin`` files
are read with ``torch.load(weights_only=True)`` (tensors only: no code in a pickle can run). The positions differ
from the reference's: it keeps text positions as if the full context were present, this package compact slot
positions (``memory.py``), so quality with a reference adapter is not what the reference reports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from longctx_llm.errors import AdapterError
from longctx_llm.model import hf_adapter
from longctx_llm.model import adapters as files

from .adapter import CCMAdapter

WEIGHT_FILES = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin", "adapter_model.bin")
LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.lora_([AB])(?:\.default)?\.weight$"
)
COMP_KEY = re.compile(r"^(?:base_model\.model\.)?model\.embed_tokens\.(?:comp|gist)_embeddings(?:\.default)?\.weight$")


def _weight_file(path: Path):
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    return None


def is_reference_layout(path) -> bool:
    p = Path(path).expanduser()
    return p.is_dir() and not (p / files.CARD).exists() and _weight_file(p) is not None


def _read(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        out = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - many failure types: corrupted zip, unpickling refused...
        raise AdapterError(f"reference CCM adapter file {str(path)!r} is unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(out, dict) or not all(isinstance(v, torch.Tensor) for v in out.values()):
        raise AdapterError(f"reference CCM adapter file {str(path)!r} does not hold a dict of tensors")
    return out


def load_reference(path, model) -> CCMAdapter:
    """A :class:`CCMAdapter` from a reference adapter directory, for ``model`` (strict key and shape checks)."""
    p = Path(path).expanduser()
    where = repr(str(p))
    wf = _weight_file(p)
    if wf is None:
        raise AdapterError(f"{where} holds none of {', '.join(WEIGHT_FILES)}")
    tensors = _read(wf)
    config = {}
    if (p / "adapter_config.json").is_file():
        try:
            config = json.loads((p / "adapter_config.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise AdapterError(f"{str(p / 'adapter_config.json')!r} is unreadable: {e}") from e
    lora: dict[tuple[int, str, str], torch.Tensor] = {}
    comp = None
    unknown = []
    for k, v in tensors.items():
        m = LORA_KEY.match(k)
        if m:
            lora[(int(m.group(1)), m.group(2), m.group(3))] = v
        elif COMP_KEY.match(k):
            comp = v
        else:
            unknown.append(k)
    if unknown:
        raise AdapterError(f"reference CCM adapter {where} has unexpected key(s), e.g. {sorted(unknown)[:3]}")
    if comp is None:
        raise AdapterError(f"reference CCM adapter {where} has no COMP embeddings (embed_tokens.comp_embeddings)")
    hidden = model.config.get_text_config().hidden_size
    if comp.dim() != 2 or comp.shape[1] != hidden:
        raise AdapterError(
            f"reference CCM adapter {where} was made for hidden size {comp.shape[-1]}; this model has {hidden}"
        )
    n_layers = len(hf_adapter.decoder_layers(model))
    want = {(i, t, ab) for i in range(n_layers) for t in "qkvo" for ab in "AB"}
    missing, extra = sorted(want - set(lora)), sorted(set(lora) - want)
    if missing or extra:
        raise AdapterError(
            f"reference CCM adapter {where} does not fit a {n_layers}-layer model: "
            f"{len(missing)} LoRA weight(s) missing (e.g. {missing[:2]}), {len(extra)} extra (e.g. {extra[:2]})"
        )
    rank = int(lora[(0, "q", "A")].shape[0])
    alpha = float(config.get("lora_alpha", 16))
    merge = "merge" in p.name.lower()
    n = comp.shape[0] // 2 if merge else comp.shape[0]
    adapter = CCMAdapter(
        model, n_comp=n, rank=rank, alpha=alpha, projections=("attention",),
        modes=("merge",) if merge else ("concat",), comp_tokens=(n,),
    )
    named = {}
    for (i, t, ab), v in lora.items():
        named[f"layers.{i}.self_attn.{t}_proj.lora_{ab}"] = v
    expected = {k: tuple(v.shape) for k, v in adapter.lora.named_weights().items()}
    files.check_keys(named, expected, where)
    adapter.lora.load_named(named)
    with torch.no_grad():
        adapter.comp_embeddings.copy_(comp[:n].float())
    adapter.card = {"kind": "ccm", "source": f"reference adapter layout ({wf.name})", "config": adapter.config}
    return adapter
