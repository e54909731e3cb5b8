"""The fused RMSNorm (one Triton kernel at inference on CUDA) equals transformers' RMSNorm it replaces.

The kernel is checked against the module under Triton's CPU interpreter when Triton is installed (and compiled on a
GPU); the replacement itself (weights, state-dict keys, putting the originals back, the CPU fallback) on CPU.
"""

from __future__ import annotations

import copy
import inspect
import os

import pytest
import torch

from longctx_llm.kernels import FusedRMSNorm
from longctx_llm.model import hf_adapter


def _norm_classes():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm

    return [LlamaRMSNorm, MistralRMSNorm, Qwen2RMSNorm, Qwen3RMSNorm]


def test_fusable_classes_compute_the_kernels_formula():
    """Every class in FUSABLE_NORMS still has the forward the kernel reproduces (a transformers release that changes
    it fails here, not silently in a decode step)."""
    classes = _norm_classes()
    assert {c.__name__ for c in classes} == set(hf_adapter.FUSABLE_NORMS)
    body = "".join(inspect.getsource(classes[0].forward).split())
    assert "hidden_states.to(torch.float32)" in body and "torch.rsqrt(variance+self.variance_epsilon)" in body
    assert body.endswith("returnself.weight*hidden_states.to(input_dtype)")
    for cls in classes[1:]:
        assert "".join(inspect.getsource(cls.forward).split()) == body, cls.__name__


def _kernel():
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    pytest.importorskip("triton")
    from longctx_llm.kernels import triton_norm

    return triton_norm, ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.bfloat16, torch.float32)])
def test_kernel_equals_the_module(x_dtype, w_dtype):
    triton_norm, device = _kernel()
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    for shape in [(1, 1, 576), (2, 7, 576), (1, 3, 4, 64)]:  # SmolLM2's hidden size (not a power of 2); Qwen3's heads
        norm = LlamaRMSNorm(shape[-1], eps=1e-5).to(device=device, dtype=w_dtype)
        with torch.no_grad():
            norm.weight.copy_(torch.rand(shape[-1]) + 0.5)
        x = (torch.randn(shape) * 3).to(device=device, dtype=x_dtype)
        ref = norm(x)
        out = triton_norm.rms_norm(x, norm.weight, norm.variance_epsilon)
        assert out.dtype == ref.dtype and out.shape == ref.shape
        if ref.dtype == torch.float32 and x_dtype == torch.float32:
            assert (out - ref).abs().max() < 1e-5
        elif device == "cuda":  # the same roundings; float32 sums in another order move a value by one step at most
            step = ref.float().abs() * 2.0 ** -7
            assert ((out.float() - ref.float()).abs() <= step + 1e-6).all()
            assert (out == ref).float().mean() > 0.99
        else:  # Triton's CPU interpreter truncates float32 -> bfloat16 casts (the GPU rounds to nearest): two steps
            step = ref.float().abs() * 2.0 ** -7
            assert ((out.float() - ref.float()).abs() <= 2 * step + 1e-6).all()


def test_replacing_keeps_weights_keys_and_logits(tiny_model):
    for arch in ("llama", "qwen3"):
        loaded = tiny_model(arch)
        model = loaded.model
        keys = set(model.state_dict())
        ids = torch.randint(5, 1000, (1, 12))
        with torch.no_grad():
            before = model(ids).logits
        n = hf_adapter.use_fused_norms(model)
        expected = 2 * 2 + 1 + (2 * 2 if arch == "qwen3" else 0)  # 2 per layer, the final norm, Qwen3's q/k norms
        assert n == expected
        assert set(model.state_dict()) == keys
        fused = [m for m in model.modules() if isinstance(m, FusedRMSNorm)]
        assert len(fused) == n and all(m.weight is m.original.weight for m in fused)
        with torch.no_grad():  # on CPU the replaced module's own forward runs: the same logits exactly
            assert torch.equal(model(ids).logits, before)
        clone = copy.deepcopy(model)  # an RCC full encoder is a deep copy: its norms keep their own weights
        assert all(m.weight is m.original.weight for m in clone.modules() if isinstance(m, FusedRMSNorm))
        assert hf_adapter.use_fused_norms(model, enabled=False) == n
        assert not any(isinstance(m, FusedRMSNorm) for m in model.modules())
        assert set(model.state_dict()) == keys
        with torch.no_grad():
            assert torch.equal(model(ids).logits, before)


def test_gpt_neox_has_nothing_to_fuse(tiny_model):
    assert hf_adapter.use_fused_norms(tiny_model("gpt_neox").model) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the fused path runs on CUDA tensors")
def test_cuda_model_uses_the_kernel_and_matches(tiny_model):
    loaded = tiny_model("llama", device="cuda")  # wrap_model fuses a CUDA model's norms
    model = loaded.model
    assert any(isinstance(m, FusedRMSNorm) for m in model.modules())
    ids = torch.randint(5, 1000, (2, 33), device="cuda")
    with torch.inference_mode():
        fused = model(ids).logits
    hf_adapter.use_fused_norms(model, enabled=False)
    with torch.inference_mode():
        plain = model(ids).logits
    assert (fused - plain).abs().max() < 1e-4


def test_a_weight_assigned_later_is_the_one_used(tiny_model):
    """load_state_dict(assign=True) or a new Parameter replaces ``weight``: the fallback (CPU, autograd, compile)
    uses it too, not the weight the module was built with."""
    a, b = tiny_model("llama").model, tiny_model("llama", seed=1).model
    with torch.no_grad():
        for m in b.modules():
            if type(m).__name__ == "LlamaRMSNorm":
                m.weight.mul_(1.5)
    ids = torch.randint(5, 1000, (1, 9))
    with torch.no_grad():
        want = b(ids).logits
    hf_adapter.use_fused_norms(a)
    a.load_state_dict(b.state_dict(), assign=True)
    with torch.no_grad():
        assert torch.equal(a(ids).logits, want)
    norm = a.model.norm
    norm.weight = torch.nn.Parameter(norm.weight.detach() * 2)
    with torch.no_grad():
        assert not torch.equal(a(ids).logits, want)
        assert norm.original.weight is norm.weight


def test_out_of_memory_in_the_kernel_is_raised_not_swallowed(monkeypatch):
    """A kernel that ran out of memory is the request's error (the engine reports it and resets the session); only
    other failures (no Triton, a kernel that cannot build) fall back, and then for good."""
    import sys
    import types

    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    import longctx_llm.kernels
    from longctx_llm.kernels import fused_norm

    norm = FusedRMSNorm(LlamaRMSNorm(8))
    monkeypatch.setattr(FusedRMSNorm, "_fast", lambda self, x: True)
    fake = types.ModuleType("longctx_llm.kernels.triton_norm")
    monkeypatch.setitem(sys.modules, "longctx_llm.kernels.triton_norm", fake)
    monkeypatch.setattr(longctx_llm.kernels, "triton_norm", fake, raising=False)  # `from . import` reads the attribute
    monkeypatch.setattr(fused_norm, "_KERNEL_OFF", set())
    x = torch.randn(2, 8)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    fake.rms_norm = oom
    with pytest.raises(torch.OutOfMemoryError):
        norm(x)
    assert not fused_norm._KERNEL_OFF

    def broken(*a, **k):
        raise RuntimeError("cannot build")

    fake.rms_norm = broken
    assert torch.equal(norm(x), norm.original(x))
    assert fused_norm._KERNEL_OFF == {("cpu", torch.float32)}
