"""A drop-in RMSNorm whose inference forward on CUDA is one Triton kernel.

transformers' Llama-family RMSNorm is eight elementwise kernels (upcast, square, mean, add, rsqrt, multiply,
downcast, weight). A decode step at batch 1 runs two per layer plus the final one, so on a GPU these tiny launches,
not the weight reads, are a large part of the step (benchmarks/RESULTS.md, GPU decode). :class:`FusedRMSNorm` holds
the module it replaces and the same ``weight`` parameter (state-dict keys do not change):

- CUDA tensors, no gradient wanted, not inside ``torch.compile`` (which fuses the norm itself), Triton importable:
  :func:`longctx_llm.kernels.triton_norm.rms_norm`, the same arithmetic in one kernel;
- anything else (CPU, training, compiling): the replaced module's own forward, unchanged.

:func:`longctx_llm.model.hf_adapter.use_fused_norms` puts it into a loaded model (the module names and classes are
transformers' business, so that lives in the adapter module).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: (device type, dtype) pairs on which the kernel failed once (the replaced module's forward is used there after)
_KERNEL_OFF: set = set()


class FusedRMSNorm(nn.Module):
    def __init__(self, original: nn.Module):
        super().__init__()
        self.weight = original.weight  # the same Parameter: loading and saving see one tensor under the same key
        self.variance_epsilon = float(original.variance_epsilon)
        self._original = (original,)  # a tuple, so it is not a submodule (no second state-dict entry)
        self.train(original.training)

    @property
    def original(self) -> nn.Module:
        """The replaced module, holding this module's current ``weight`` (one that was assigned a new Parameter,
        e.g. by ``load_state_dict(assign=True)``, passes it on)."""
        module = self._original[0]
        if module.weight is not self.weight:
            module.weight = self.weight
        return module

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}, replaces {type(self.original).__name__}"

    def _fast(self, x: torch.Tensor) -> bool:
        if not x.is_cuda or (x.device.type, x.dtype) in _KERNEL_OFF:
            return False
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return False
        return not torch.compiler.is_compiling()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self._fast(hidden_states):
            try:
                from . import triton_norm

                return triton_norm.rms_norm(hidden_states, self.weight, self.variance_epsilon)
            except torch.OutOfMemoryError:
                raise  # the request's problem, reported as such (not a reason to give up the kernel)
            except Exception as exc:  # no Triton, or one that cannot build the kernel here
                _KERNEL_OFF.add((hidden_states.device.type, hidden_states.dtype))
                logger.warning("fused RMSNorm: kernel unavailable on %s/%s (%s: %s); using the model's own norm",
                               hidden_states.device, hidden_states.dtype, type(exc).__name__, exc)
        return self.original(hidden_states)
