"""Replaying a model forward from a CUDA graph when its shapes and buffers repeat.

A small model's forward on a GPU is launch-bound: SmolLM2-135M runs ~400 kernels per forward, and the Python that
launches them (transformers' layers, our attention and cache code) costs several times the GPU time (profiled:
302 ms of CPU against 52 ms of GPU for 8 streaming pieces). A CUDA graph records the kernels once and replays them
with one launch. That is only valid when a forward is, to the GPU, the same program every time:

- the same shapes (one graph per key, e.g. one for one-token decode and one for full prefill pieces);
- every tensor it reads or writes lives at a fixed address (the cache's buffers, and the static input buffers this
  module copies each call's inputs into);
- no Python decision inside the forward depends on per-call state (it is taken once, at capture).

:class:`KVCacheState` asks its subclass for a key (``graph_key``) per forward; a state returns one only for forwards
that meet those rules (a static cache's fixed decode step; StreamingLLM's full ring cache and its one-token steps into
a filling ring: see ``longctx_streaming.cache``); a pool of rows may run its own (StreamingLLM's bucketed rings:
``longctx_streaming.pool``). Everything else runs eagerly.
The first call with a new key runs eagerly (it also warms up lazily initialised libraries), the second captures.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Hashable

import torch

logger = logging.getLogger(__name__)

Forward = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class GraphRunner:
    """Captured forwards of one cache, keyed by shape; ``run`` replays or falls back to eager.

    ``owner`` is the object whose buffers the captured kernels write (the cache): a state that replaces its cache
    must make a new runner. Each graph keeps its own memory pool, so graphs never share intermediates.
    """

    def __init__(self, owner: object, *, capture_after: int = 1, max_graphs: int = 4):
        self.owner = owner
        self.capture_after = capture_after
        self.max_graphs = max_graphs
        self.enabled = True
        self._seen: Counter = Counter()
        self._graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, dict[str, torch.Tensor], torch.Tensor]] = {}

    @property
    def captured(self) -> int:
        return len(self._graphs)

    def run(self, key: Hashable, inputs: dict[str, torch.Tensor], forward: Forward) -> torch.Tensor:
        """``forward(inputs)``, from a graph when one is (or can now be) captured for ``key``.

        ``forward`` must read its tensors only from the dict it is given and from buffers that outlive the graph.
        The result is a fresh tensor (the graph's output buffer is overwritten by the next replay).
        """
        entry = self._graphs.get(key)
        if entry is None:
            self._seen[key] += 1
            if not self.enabled or self._seen[key] <= self.capture_after or len(self._graphs) >= self.max_graphs:
                return forward(inputs)
            entry = self._capture(key, inputs, forward)
            if entry is None:
                return forward(inputs)
        graph, static, out = entry
        for name, t in inputs.items():
            static[name].copy_(t)
        graph.replay()
        return out.clone()

    def _capture(self, key, inputs, forward):
        static = {name: t.clone() for name, t in inputs.items()}
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: sessions in other threads keep running their own CUDA work (sampling, cache
            # allocation, copies) during this capture; the capture only restricts this thread (the model lock keeps
            # other threads' forwards out of it, and they use other streams than the capture's)
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = forward(static)
        except Exception as exc:  # a kernel or library that cannot be captured: stay eager from now on
            logger.warning("CUDA graph capture failed (%s: %s); running this state eagerly", type(exc).__name__, exc)
            self.enabled = False
            torch.cuda.synchronize()
            return None
        self._graphs[key] = (graph, static, out)
        logger.debug("captured a CUDA graph for %r", key)
        return self._graphs[key]


def available(device: torch.device) -> bool:
    """CUDA graphs need a CUDA device (and are pointless elsewhere)."""
    return device.type == "cuda" and torch.cuda.is_available()
