import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from longctx_llm.kernels import cuda_graphs
from longctx_llm.runtime import fast_decode

sys.path.insert(0, str(Path(__file__).parent))


# CUDA graphs emulated on CPU, as strictly as a real graph: "capture" runs the forward once and records every tensor op
# it issues (with the very tensors and Python values it was given); "replay" runs that op list again, with none of the
# forward's Python, writing each op's results into the tensors recorded at capture. Python state a real graph freezes
# (ints, branches, tensors made anew on ``self`` and read by the next step) is frozen here too, and a host sync inside
# the forward (``.item()``, ``bool(tensor)``, ``nonzero``), which a real capture refuses, fails the capture.
_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
          torch.ops.aten.is_nonzero.default}


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SYNCS:
            raise AssertionError(f"a host sync ({func}) inside a captured forward: a real CUDA graph capture fails")
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


def _storages(values) -> set:
    return {v.untyped_storage().data_ptr() for v in values if isinstance(v, torch.Tensor)}


class _EmulatedGraph:
    def __init__(self, forward, static):
        recorder = _Recorder()
        with recorder:
            self.out = forward(static)
        self.ops = recorder.ops

    def replay(self):
        for func, args, kwargs, recorded in self.ops:
            fresh = func(*args, **kwargs)
            inputs = _storages(tree_flatten((args, kwargs))[0])
            for old, new in zip(tree_flatten(recorded)[0], tree_flatten(fresh)[0]):
                if isinstance(old, torch.Tensor) and new.untyped_storage().data_ptr() not in inputs:
                    old.copy_(new)  # (a view of an input, or an in-place op on one, has written there already)


class _EmulatedRunner(cuda_graphs.GraphRunner):
    def _capture(self, key, inputs, forward):
        static = {name: t.clone() for name, t in inputs.items()}
        graph = _EmulatedGraph(forward, static)
        self._graphs[key] = (graph, static, graph.out)
        return self._graphs[key]


@pytest.fixture
def emulated(monkeypatch):
    for module, available in ((fast_decode, "cuda_available"), (cuda_graphs, "available")):  # a session's, a pool's
        monkeypatch.setattr(module, available, lambda device: True)
        monkeypatch.setattr(module, "GraphRunner", _EmulatedRunner)
