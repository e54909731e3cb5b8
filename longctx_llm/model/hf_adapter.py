"""Every touch of transformers internals lives here (and only here).

The seams used (transformers 5.x):
- ``AttentionInterface.register`` for one attention function, ``"longctx"``, that dispatches to the active
  strategy's attention (passed per call as the ``longctx`` keyword, never stored process-wide) or to the stock
  SDPA path. No ``forward`` is monkeypatched. Because no mask function is registered under that name,
  transformers builds no attention mask at all (``masking_utils`` returns early), so nothing n x n is ever
  materialised unless the default path builds a (chunk x cache) mask itself.
- the model's rotary embedding module (``inv_freq``, ``attention_scaling``, partial rotary) to re-rotate queries
  and keys by position deltas (DCA's query rotations, StreamingLLM's cache shifts);
- ``DynamicCache`` and the ``logits_to_keep`` forward argument;
- per-architecture module names (decoder layers, their projections, the final norm, the input embeddings) for
  per-call forward hooks: a weight delta on chosen projections at chosen positions (CCM's conditional LoRA, an
  encoder's LoRA), values added after chosen decoder layers (RCC's per-layer injection), hidden states recorded at
  chosen positions (RCC's encoder). Hooks are registered for one forward call and removed after it, under the
  model's forward lock, so no module is patched and nothing outlives the call.
- tensor parallelism (``DistributedConfig``, the model's ``tp_size``, its ``DTensor`` weights): transformers splits the
  attention projections by heads, so the attention function sees this process's heads only (every strategy's
  attention works from the tensors' shapes, and :class:`ModelInfo` counts heads per process); a projection hook sees
  the whole projection, as on one process (:func:`installed` gathers a split input or output around it);
- the RMSNorm classes of the Llama family (``FUSABLE_NORMS``): on a CUDA model each is replaced by a module holding
  it and its weight that runs one Triton kernel for inference (:mod:`longctx_llm.kernels.fused_norm`); nothing else is
  replaced.

The version range below is the one the test-suite runs against (tests/unit/test_hf_adapter.py).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..errors import UnsupportedModelError

logger = logging.getLogger(__name__)

SUPPORTED_TRANSFORMERS = ">=5.17,<5.24"
ATTENTION_NAME = "longctx"
#: model_type -> (decoder attribute on the CausalLM, rotary attribute on the decoder)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("model", "rotary_emb"),
    "mistral": ("model", "rotary_emb"),
    "qwen2": ("model", "rotary_emb"),
    "qwen3": ("model", "rotary_emb"),
    "gpt_neox": ("gpt_neox", "rotary_emb"),
}
#: model_type -> module names inside one decoder layer: the attention projections and the MLP projections
PROJECTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    **{
        t: {
            "attention": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
            "mlp": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
        }
        for t in ("llama", "mistral", "qwen2", "qwen3")
    },
    "gpt_neox": {
        "attention": ("attention.query_key_value", "attention.dense"),
        "mlp": ("mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    },
}
#: model_type -> the final norm's attribute on the decoder
FINAL_NORM = {"llama": "norm", "mistral": "norm", "qwen2": "norm", "qwen3": "norm", "gpt_neox": "final_layer_norm"}
#: rope types whose frequencies do not depend on the sequence length, so rotations compose (R(a)R(b) = R(a+b)).
STATIC_ROPE_TYPES = {"default", "linear", "llama3", "yarn", "ntk"}


def check_transformers_version() -> str:
    """Return the installed version; warn once if it is outside the tested range."""
    import transformers
    from packaging.specifiers import SpecifierSet

    version = transformers.__version__
    if version not in SpecifierSet(SUPPORTED_TRANSFORMERS):
        logger.warning(
            "transformers %s is outside the tested range %s; strategies may break", version, SUPPORTED_TRANSFORMERS
        )
    return version


# --------------------------------------------------------------------------------------------------------------
# Attention dispatch
# --------------------------------------------------------------------------------------------------------------

#: ``fn(module, query, key, value, ctx, *, scaling, dropout) -> (B, T, H, D)`` tensor (or ``(tensor, weights)``).
#: query (B, H, T, D) is already rotated by RoPE at ``rope_positions``; key/value (B, H_kv, K, D) are the whole
#: cache after this step's update, new keys last. Like transformers' own attention functions, the output is
#: transposed to (B, T, H, D).
AttentionFn = Callable[..., torch.Tensor]


@dataclass
class AttentionContext:
    """Per-forward information handed to attention functions (the ``longctx`` keyword of the model call).

    Attributes:
        q_positions: (B, T) logical positions of the new queries (the position in the text, or in the cache for
            strategies that assign positions inside the cache).
        key_padding: (B, K) bool over every key the cache returns (True = real token), or None when no row pads.
        attention: the strategy's attention function, or None for plain causal attention.
        extra: free-form per-strategy data (chunk sizes, rotary tables...).
    """

    q_positions: torch.Tensor
    key_padding: Optional[torch.Tensor] = None
    attention: Optional[AttentionFn] = None
    extra: dict[str, Any] = field(default_factory=dict)
    _key_positions: Optional[torch.Tensor] = None

    def key_positions(self, kv_len: int) -> torch.Tensor:
        """(B, K) logical positions of the keys in a cache laid out in text order (left padding counts 0)."""
        if self._key_positions is None or self._key_positions.shape[-1] != kv_len:
            device = self.q_positions.device
            if self.key_padding is None:
                pos = torch.arange(kv_len, device=device).unsqueeze(0)
            else:
                pos = (self.key_padding.long().cumsum(-1) - 1).clamp_min(0)
            self._key_positions = pos
        return self._key_positions


def causal_padding_mask(ctx: AttentionContext, q_len: int, kv_len: int) -> Optional[torch.Tensor]:
    """(B|1, 1, T, K) bool mask for new queries appended at the end of the cache, or None if plain causal works.

    Queries always see themselves so that padding rows never produce NaN.
    """
    if ctx.key_padding is None and (q_len == kv_len or q_len == 1):
        return None
    device = ctx.q_positions.device
    k_idx = torch.arange(kv_len, device=device)
    q_idx = torch.arange(kv_len - q_len, kv_len, device=device)
    mask = k_idx[None, :] <= q_idx[:, None]  # (T, K)
    if ctx.key_padding is None:
        return mask[None, None]
    diag = k_idx[None, :] == q_idx[:, None]
    return ((mask[None] & ctx.key_padding[:, None, :]) | diag[None])[:, None]  # (B, 1, T, K)


def default_attention(module, query, key, value, ctx: AttentionContext, *, scaling, dropout=0.0, **kwargs):
    """Plain causal attention through transformers' own SDPA path (bit-for-bit the stock ``sdpa`` result)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    view = ctx.extra.get("decode")
    if view is not None:  # a fixed decode step over a preallocated cache (longctx_llm.kernels.kv_cache)
        from ..kernels.decode_attention import attend

        out = attend(query.transpose(1, 2), key, value, valid=view.valid, first=view.first, scale=scaling)
        return out.transpose(1, 2)  # (B, 1, H, D)
    q_len, kv_len = query.shape[2], key.shape[2]
    if ctx.key_padding is None and 1 < q_len < kv_len:
        # a prefill piece after cached tokens: bottom-right causal alignment without materialising a mask, so the
        # fused (flash / memory-efficient) kernels still run
        from torch.nn.attention.bias import causal_lower_right

        out = torch.nn.functional.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=causal_lower_right(q_len, kv_len),
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )  # (B, H, T, D)
        return out.transpose(1, 2).contiguous()
    mask = causal_padding_mask(ctx, q_len, kv_len)
    if q_len == 1 and query.is_cuda:
        # decode: cuDNN attention builds a plan per new key length (~9 ms of CPU per call, profiled on an H200 with
        # torch 2.11), which a growing cache hits every step; the flash / memory-efficient kernels have no set-up
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]):
            return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling)
    return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout, scaling=scaling)


def _longctx_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, longctx=None, **kwargs):
    """The registered attention function: dispatch on the per-call context, never on global state."""
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if longctx is None:  # called outside our loop (e.g. plain model.generate): behave like sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling)
    fn = longctx.attention or default_attention
    out = fn(module, query, key, value, longctx, scaling=scaling, dropout=dropout)
    if isinstance(out, tuple):
        return out
    return out, None


_registered = False


def register_attention() -> None:
    """Register the ``longctx`` attention function (idempotent; adds a name, changes no other model)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, _longctx_attention)
    _registered = True


def use_longctx_attention(model) -> None:
    """Point one loaded model at the dispatching attention function."""
    register_attention()
    model.set_attn_implementation(ATTENTION_NAME)


#: RMSNorm classes whose forward is ``weight * (x.float() * rsqrt(mean(x²) + eps)).to(x.dtype)`` (checked against
#: their source in tests/unit/test_fused_norm.py), which :class:`~longctx_llm.kernels.fused_norm.FusedRMSNorm` computes
FUSABLE_NORMS = frozenset({"LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm"})


def use_fused_norms(model, enabled: bool = True) -> int:
    """Replace every RMSNorm of a fusable class with a :class:`~longctx_llm.kernels.fused_norm.FusedRMSNorm` holding it
    (``enabled=False`` puts the originals back). Returns how many modules changed. Weights and state-dict keys stay
    the same; on CPU, under autograd or ``torch.compile`` the replaced module's own forward runs."""
    from ..kernels.fused_norm import FusedRMSNorm

    changed = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            cls = type(child)
            ours = cls.__name__ in FUSABLE_NORMS and cls.__module__.startswith("transformers.models.")
            if enabled and ours and hasattr(child, "variance_epsilon"):  # not remote code that reuses a name
                setattr(parent, name, FusedRMSNorm(child))
                changed += 1
            elif not enabled and isinstance(child, FusedRMSNorm):
                setattr(parent, name, child.original)  # holding the current weight
                changed += 1
    return changed


# --------------------------------------------------------------------------------------------------------------
# Model facts and rotary embeddings
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What strategies need to know about a model, read once from its config.

    ``num_heads`` and ``num_kv_heads`` are the heads this process's attention computes: the model's, divided by
    ``tp`` when the model is split over ``tp`` processes (tensor parallel).
    """

    model_type: str
    pretraining_length: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_type: Optional[str]  # None: no rotary embedding (GPT-2, ALiBi models)
    tp: int = 1

    @property
    def has_rope(self) -> bool:
        return self.rope_type is not None


def model_info(config, tp: int = 1) -> ModelInfo:
    """The facts of a model's config; with ``tp`` > 1, the heads of one of ``tp`` processes."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    mtype = getattr(text, "model_type", "unknown")
    heads = text.num_attention_heads
    rope = getattr(text, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default") if (mtype in ARCHITECTURES or rope) else None
    if getattr(text, "position_embedding_type", None) == "alibi" or getattr(text, "alibi", False):
        rope_type = None
    return ModelInfo(
        model_type=mtype,
        pretraining_length=int(getattr(text, "max_position_embeddings", 0) or 0),
        num_layers=text.num_hidden_layers,
        num_heads=heads // tp,
        num_kv_heads=(getattr(text, "num_key_value_heads", None) or heads) // tp,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        rope_type=rope_type,
        tp=tp,
    )


# --------------------------------------------------------------------------------------------------------------
# Tensor parallel
# --------------------------------------------------------------------------------------------------------------


def tensor_parallel_config(tp: int):
    """What ``from_pretrained`` takes to split a model over ``tp`` processes by the architecture's own plan."""
    from transformers.distributed import DistributedConfig

    return DistributedConfig(tp_size=tp, tp_plan="auto")


def has_tp_plan(config) -> bool:
    """Whether transformers knows how to split this architecture (its ``base_model_tp_plan``)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text, "base_model_tp_plan", None))


def tensor_parallel_size(model) -> int:
    """How many processes a loaded model is split over (1: not split)."""
    return int(getattr(model, "tp_size", None) or 1)


def _split(weight) -> Optional[tuple[Any, int]]:
    """(device mesh, dim) of a projection weight split by tensor parallelism (0: by output, 1: by input), or None."""
    from torch.distributed.tensor import DTensor

    if not isinstance(weight, DTensor):
        return None
    for p in weight.placements:
        if p.is_shard():
            return weight.device_mesh, p.dim % weight.dim()
    return None


def _gather_last(local: torch.Tensor, mesh, size: int) -> torch.Tensor:
    """The whole tensor of which every process holds a slice of the last dim (``size`` wide in all)."""
    from torch.distributed.tensor import DTensor, Shard

    shape = (*local.shape[:-1], size)
    stride = torch.empty(shape, device="meta").stride()
    whole = DTensor.from_local(local.contiguous(), mesh, [Shard(local.dim() - 1)], run_check=False, shape=shape,
                               stride=stride)
    return whole.full_tensor()


def _own_slice(whole: torch.Tensor, mesh) -> torch.Tensor:
    """This process's slice of the last dim of a tensor every process holds whole (the inverse of _gather_last)."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    rep = DTensor.from_local(whole.contiguous(), mesh, [Replicate()], run_check=False)
    return rep.redistribute(mesh, [Shard(whole.dim() - 1)]).to_local()


def _whole_projection(module, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """``fn(input, output)`` of a projection as on one process, wrapped for a projection split by tensor parallelism:
    a projection split by output (q/k/v, gate/up) gets its output gathered and hands back its own slice; one split by
    input (o, down) gets its input gathered (its output is already whole)."""
    split = _split(getattr(module, "weight", None))
    if split is None:
        return fn
    mesh, dim = split
    if dim == 0:
        return lambda x, out: _own_slice(fn(x, _gather_last(out, mesh, module.out_features)), mesh)
    return lambda x, out: fn(_gather_last(x, mesh, module.in_features), out)


def require_rope(info: ModelInfo, strategy: str) -> None:
    """Raise a clear error unless the model is a supported RoPE architecture with a static rope type."""
    if info.model_type not in ARCHITECTURES or not info.has_rope:
        raise UnsupportedModelError(
            f"strategy {strategy!r} needs a rotary-position model; model_type {info.model_type!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    if info.rope_type not in STATIC_ROPE_TYPES:
        raise UnsupportedModelError(
            f"strategy {strategy!r} needs position-independent rope frequencies; rope_type {info.rope_type!r} is "
            f"not supported (supported: {', '.join(sorted(STATIC_ROPE_TYPES))})"
        )


def rotary_module(model):
    mtype = model.config.model_type
    if mtype not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type {mtype!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    decoder_attr, rotary_attr = ARCHITECTURES[mtype]
    return getattr(getattr(model, decoder_attr), rotary_attr)


@dataclass
class Rotary:
    """RoPE of one model, in the rotate-half convention all supported architectures use.

    ``rotate(x, delta)`` turns a vector rotated at position p into the same vector rotated at p + delta, which is
    how DCA re-rotates queries and StreamingLLM shifts kept keys. Frequencies are static, so rotations compose.
    """

    inv_freq: torch.Tensor  # (rotary_dim / 2,) float32

    @property
    def rotary_dim(self) -> int:
        return self.inv_freq.shape[0] * 2

    @classmethod
    def of(cls, model) -> "Rotary":
        module = rotary_module(model)
        return cls(inv_freq=module.inv_freq.detach().float().clone())

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin of shape (*positions.shape, rotary_dim) for float/int positions (no attention scaling)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        """[x1, x2] -> [-x2, x1] over the last dim (the rotary dims only): RoPE is ``x cos + rotate_half(x) sin``."""
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def rotate(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Rotate x (B, H, T, D) by ``delta`` positions; delta is (T,), (B, T) or a scalar tensor."""
        if delta.dim() == 0:
            delta = delta.reshape(1)
        cos, sin = self.cos_sin(delta, x.dtype)
        if cos.dim() == 2:  # (T, R) -> (1, 1, T, R)
            cos, sin = cos[None, None], sin[None, None]
        else:  # (B, T, R) -> (B, 1, T, R)
            cos, sin = cos[:, None], sin[:, None]
        r = self.rotary_dim
        x_rot, x_pass = x[..., :r], x[..., r:]
        out = x_rot * cos + self.rotate_half(x_rot) * sin
        return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


# --------------------------------------------------------------------------------------------------------------
# Caches and the forward call
# --------------------------------------------------------------------------------------------------------------


def new_dynamic_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def cache_length(cache) -> int:
    return 0 if cache is None else int(cache.get_seq_length())


def _preallocated(cache) -> bool:
    """Whether ``cache`` is the core's :class:`~longctx_llm.kernels.kv_cache.StaticCache` (its own methods do the
    work)."""
    from ..kernels.kv_cache import StaticCache

    return isinstance(cache, StaticCache)


def crop_cache(cache, length: int) -> None:
    """Drop every cached position from ``length`` on.

    Slices the layers directly: ``DynamicCache.crop``'s argument changed meaning within 5.x (absolute length, then
    a count to remove), which is exactly the kind of drift this module exists to absorb.
    """
    if _preallocated(cache):
        cache.crop(length)
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]


def cache_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (keys, values) (B, H_kv, K, D) of a non-empty cache (a DynamicCache or the core's StaticCache)."""
    if _preallocated(cache):
        return cache.layers()
    return [(layer.keys, layer.values) for layer in cache.layers]


def set_cache_kv(cache, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Replace one layer's keys and values (a memory editing its slots); a StaticCache copies them into its buffers."""
    if _preallocated(cache):
        cache.set_layer(layer_idx, keys, values)
        return
    layer = cache.layers[layer_idx]
    layer.keys, layer.values = keys, values


def cache_tensors(cache) -> dict[str, torch.Tensor]:
    """Flat name -> tensor view of a cache, for saving (a StaticCache's are views of its buffers: copy them before the
    cache changes)."""
    if _preallocated(cache):
        return cache.tensors()
    out = {}
    for i, layer in enumerate(cache.layers):
        if getattr(layer, "keys", None) is None or layer.keys is None:
            continue
        out[f"layer{i}.keys"] = layer.keys
        out[f"layer{i}.values"] = layer.values
    return out


def load_cache_tensors(model, tensors: dict[str, torch.Tensor], device) -> Any:
    """Rebuild a DynamicCache from :func:`cache_tensors` output."""
    cache = new_dynamic_cache(model)
    n = model.config.get_text_config().num_hidden_layers
    for i in range(n):
        k = tensors.get(f"layer{i}.keys")
        if k is None:
            continue
        cache.update(k.to(device), tensors[f"layer{i}.values"].to(device), i)
    return cache


# --------------------------------------------------------------------------------------------------------------
# Module lookup and per-call forward hooks
# --------------------------------------------------------------------------------------------------------------


def _arch(model) -> str:
    mtype = model.config.model_type
    if mtype not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type {mtype!r} is not supported (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return mtype


#: model_type -> (name prefix in this transformers' state dict, the prefix checkpoints written by transformers 4.x
#: use); transformers 5 renamed GPT-NeoX's head from ``embed_out`` to ``lm_head`` and renames on load
LEGACY_NAMES: dict[str, tuple[str, str]] = {"gpt_neox": ("lm_head.", "embed_out.")}


def legacy_name(model, name: str) -> str:
    """``name`` (this transformers' state-dict key) as a transformers-4.x checkpoint spells it."""
    new, old = LEGACY_NAMES.get(model.config.model_type, ("", ""))
    return old + name[len(new):] if new and name.startswith(new) else name


def current_name(model, name: str) -> str:
    """The inverse of :func:`legacy_name`."""
    new, old = LEGACY_NAMES.get(model.config.model_type, ("", ""))
    return new + name[len(old):] if old and name.startswith(old) else name


def decoder(model):
    """The decoder stack of a CausalLM (``model.model`` / ``model.gpt_neox``)."""
    return getattr(model, ARCHITECTURES[_arch(model)][0])


def decoder_layers(model) -> list:
    return list(decoder(model).layers)


def input_embeddings(model) -> torch.nn.Module:
    return model.get_input_embeddings()


def projection_names(model, targets) -> tuple[str, ...]:
    """Projection names inside a decoder layer for ``targets``: group names (``attention``, ``mlp``) or names."""
    groups = PROJECTIONS[_arch(model)]
    names: list[str] = []
    for t in targets:
        if t in groups:
            names.extend(groups[t])
        elif any(t in g for g in groups.values()):
            names.append(t)
        else:
            valid = sorted({*groups, *(n for g in groups.values() for n in g)})
            raise UnsupportedModelError(
                f"projection target {t!r} does not exist in a {model.config.model_type} layer (valid: {', '.join(valid)})"
            )
    return tuple(dict.fromkeys(names))


def projection(model, layer: int, name: str) -> torch.nn.Linear:
    return decoder_layers(model)[layer].get_submodule(name)


#: ``fn(layer_idx, projection_name, input, output) -> output``: may return a changed projection output
ProjectionHook = Callable[[int, str, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``fn(layer_idx, hidden) -> hidden``: called with each decoder layer's output (B, T, H)
LayerHook = Callable[[int, torch.Tensor], torch.Tensor]


@dataclass
class ForwardHooks:
    """What one forward call adds to the stock model, as functions of layer index and tensors.

    Attributes:
        projections: projection names (see :func:`projection_names`) whose outputs ``projection`` may change.
        projection: called for every listed projection of every layer (a conditional LoRA adds its delta at the
            positions it chooses; an encoder LoRA everywhere).
        layer_output: called with every decoder layer's output; returns the tensor the next layer receives.
        embedding: called with the input-embedding output (B, T, H); returns the tensor the first layer receives.
        final_norm: called with the final norm's output (B, T, H) (recording only: its return value is used).
        replay_key: a hashable naming these hooks when every call of them is the same GPU program (they read only
            weights and tensors at fixed addresses, decide nothing per call from values or positions), so a
            forward with them may replay from a CUDA graph captured with them (RCC's reader LoRA at decode);
            None: never replayed.
    """

    projections: tuple[str, ...] = ()
    projection: Optional[ProjectionHook] = None
    layer_output: Optional[LayerHook] = None
    embedding: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    final_norm: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    replay_key: Optional[Any] = None


def combined(*hooks: Optional[ForwardHooks]) -> Optional[ForwardHooks]:
    """One :class:`ForwardHooks` applying each of ``hooks`` in turn (None entries skipped; None if none is left).

    Projection hooks run for the projections each one lists; layer-output and embedding hooks chain; at most one
    may record the final norm."""
    parts = [h for h in hooks if h is not None]
    if len(parts) <= 1:
        return parts[0] if parts else None
    norms = [h.final_norm for h in parts if h.final_norm is not None]
    if len(norms) > 1:
        raise ValueError("combined: more than one hook records the final norm")
    with_proj = [h for h in parts if h.projection is not None]
    with_layer = [h for h in parts if h.layer_output is not None]
    with_emb = [h for h in parts if h.embedding is not None]

    def projection(i: int, name: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        for h in with_proj:
            if name in h.projections:
                out = h.projection(i, name, x, out)
        return out

    def layer_output(i: int, h: torch.Tensor) -> torch.Tensor:
        for part in with_layer:
            h = part.layer_output(i, h)
        return h

    def embedding(e: torch.Tensor) -> torch.Tensor:
        for part in with_emb:
            e = part.embedding(e)
        return e

    keys = [h.replay_key for h in parts]
    return ForwardHooks(
        projections=tuple(dict.fromkeys(n for h in with_proj for n in h.projections)),
        projection=projection if with_proj else None,
        layer_output=layer_output if with_layer else None,
        embedding=embedding if with_emb else None,
        final_norm=norms[0] if norms else None,
        replay_key=tuple(keys) if all(k is not None for k in keys) else None,
    )


def _replace_output(out, fn):
    if isinstance(out, tuple):
        return (fn(out[0]), *out[1:])
    return fn(out)


@contextlib.contextmanager
def installed(model, hooks: Optional[ForwardHooks]):
    """Register ``hooks`` on ``model`` for the duration of the block (one forward call), then remove them."""
    if hooks is None:
        yield
        return
    handles = []
    try:
        layers = decoder_layers(model)
        if hooks.projection is not None:
            for i, layer in enumerate(layers):
                for name in hooks.projections:
                    mod = layer.get_submodule(name)
                    fn = _whole_projection(mod, lambda x, out, i=i, name=name: hooks.projection(i, name, x, out))
                    handles.append(mod.register_forward_hook(lambda m, args, out, fn=fn: fn(args[0], out)))
        if hooks.layer_output is not None:
            for i, layer in enumerate(layers):
                handles.append(
                    layer.register_forward_hook(
                        lambda m, args, out, i=i: _replace_output(out, lambda h: hooks.layer_output(i, h))
                    )
                )
        if hooks.embedding is not None:
            handles.append(input_embeddings(model).register_forward_hook(lambda m, args, out: hooks.embedding(out)))
        if hooks.final_norm is not None:
            norm = getattr(decoder(model), FINAL_NORM[_arch(model)])
            handles.append(norm.register_forward_hook(lambda m, args, out: hooks.final_norm(out)))
        yield
    finally:
        for h in handles:
            h.remove()


def forward(
    model,
    input_ids: Optional[torch.Tensor],
    *,
    position_ids,
    cache,
    ctx: AttentionContext,
    logits_to_keep: int = 1,
    inputs_embeds: Optional[torch.Tensor] = None,
    hooks: Optional[ForwardHooks] = None,
    **kwargs,
):
    """One forward pass of new tokens (ids, or embeddings) against ``cache``; returns logits (B, keep or T, V)."""
    with installed(model, hooks):
        out = model(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
            logits_to_keep=logits_to_keep,
            longctx=ctx,
            **kwargs,
        )
    return out.logits


def hidden_states_at(
    model,
    input_ids: torch.Tensor,
    index: torch.Tensor,
    *,
    position_ids: Optional[torch.Tensor] = None,
    ctx: Optional[AttentionContext] = None,
    hooks: Optional[ForwardHooks] = None,
) -> torch.Tensor:
    """Hidden states (B, len(index), L + 1, H) at positions ``index`` of a cache-free forward over ``input_ids``.

    The L + 1 states follow transformers' ``output_hidden_states`` convention: the embedding output, the outputs of
    layers 0..L-2, and the final norm applied to the last layer's output (what RCC's encoder keeps, REFERENCE §4).
    Only the selected positions are kept, and the LM head never runs.
    """
    B, T = input_ids.shape
    if position_ids is None:
        position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, -1)
    if ctx is None:
        ctx = AttentionContext(q_positions=position_ids)
    n_layers = len(decoder_layers(model))
    states: list[Optional[torch.Tensor]] = [None] * (n_layers + 1)

    def keep(slot: int):
        def fn(h: torch.Tensor) -> torch.Tensor:
            states[slot] = h[:, index]
            return h

        return fn

    base = hooks or ForwardHooks()
    layer_fn = base.layer_output

    def layer_output(i: int, h: torch.Tensor) -> torch.Tensor:
        if layer_fn is not None:
            h = layer_fn(i, h)
        if i < n_layers - 1:
            states[i + 1] = h[:, index]
        return h

    rec = ForwardHooks(
        projections=base.projections,
        projection=base.projection,
        layer_output=layer_output,
        embedding=keep(0),
        final_norm=keep(n_layers),
    )
    with installed(model, rec):
        decoder(model)(input_ids=input_ids, position_ids=position_ids, use_cache=False, longctx=ctx)
    return torch.stack(states, dim=2)  # (B, n, L + 1, H)
