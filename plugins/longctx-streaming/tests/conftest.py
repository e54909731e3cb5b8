import sys
from pathlib import Path

import pytest

from longctx_llm.kernels import cuda_graphs
from longctx_llm.runtime import fast_decode

sys.path.insert(0, str(Path(__file__).parent))


# CUDA graphs emulated on CPU: "capture" runs the forward once from the static buffers (so a forward that is not
# idempotent, or that reads a per-call tensor instead of a fixed buffer, shows up as a mismatch), and "replay" runs
# it again from the same static buffers.
class _EmulatedGraph:
    def __init__(self, forward, static):
        self.forward, self.static = forward, static
        self.out = forward(static)  # "capture": a real capture would record these kernels

    def replay(self):
        self.out.copy_(self.forward(self.static))


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
