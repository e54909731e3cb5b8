"""Composing strategies: ``strategy: [{name: streaming, window: 16384}, {name: dca}]``.

Plugins never import each other; the core composes them along the seams of :class:`KVCacheState`:

- the **first** strategy owns the cache and where new tokens sit (``make_cache``, ``logical_positions``) and
  everything the engine reads (window, capabilities, rewind, save);
- the **second** supplies the positions fed to RoPE and the attention function (``rope_positions``,
  ``attention``, ``attention_extra``), i.e. how a position is turned into attention.

The first strategy is validated against the model *as the second one extends it*: its ``pretraining_length`` is
replaced by the second strategy's window, so StreamingLLM with DCA inside accepts a window of up to 8x the
model's trained length (REFERENCE.md §2: "make it combinable with a strategy that does extend context").
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from ..errors import ConfigError
from .kv_state import KVCacheState
from .strategy import Strategy


class StackedStrategy(Strategy):
    name = "stack"

    def __init__(self, layers: Sequence[Strategy]):
        if len(layers) != 2:
            raise ConfigError(f"strategy: a list composes exactly 2 strategies (cache owner, attention), got {len(layers)}")
        self.outer, self.inner = layers
        self.options = self.outer.options
        self.capabilities = dataclasses.replace(
            self.outer.capabilities,
            batching=self.outer.capabilities.batching and self.inner.capabilities.batching,
            cpu=self.outer.capabilities.cpu and self.inner.capabilities.cpu,
            # the inner strategy's RoPE positions decide whether keys may be moved: both must allow it
            compact=self.outer.capabilities.compact and self.inner.capabilities.compact,
            splice=self.outer.capabilities.splice and self.inner.capabilities.splice,
        )

    def _extended(self, info):
        window = self.inner.context_window(info)
        return info if window is None else dataclasses.replace(info, pretraining_length=window)

    def validate(self, info) -> None:
        self.inner.validate(info)
        self.outer.validate(self._extended(info))

    def prepare(self, model) -> None:
        self.inner.prepare(model)
        self.outer.prepare(model)

    def context_window(self, info) -> Optional[int]:
        return self.outer.context_window(self._extended(info))

    def attention_span(self, info) -> int:
        return self.outer.attention_span(self._extended(info))

    def new_state(self, model, batch_size: int = 1):
        outer = self.outer.new_state(model, batch_size)
        inner = self.inner.new_state(model, batch_size)
        for s, which in ((outer, self.outer), (inner, self.inner)):
            if not isinstance(s, KVCacheState):
                raise ConfigError(f"strategy {which.name!r} does not expose KV-cache seams, so it cannot be composed")
        owned = [m for m in ("rope_positions", "attention") if getattr(type(outer), m) is not getattr(KVCacheState, m)]
        if owned:
            # e.g. StreamingLLM keeps a ring buffer whose key order and RoPE offsets its own attention relies on
            raise ConfigError(
                f"strategy {self.outer.name!r} sets its own {' and '.join(owned)}, so it cannot host "
                f"{self.inner.name!r}'s; compose it as the second strategy, or use it alone"
            )
        # the attention-side seams of the inner state, bound to the inner state (its options and model)
        outer.rope_positions = inner.rope_positions
        outer.attention = inner.attention
        outer.attention_extra = inner.attention_extra
        return outer

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "layers": [self.outer.describe(), self.inner.describe()]}

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "layers": [self.outer.identity(), self.inner.identity()]}

    def __repr__(self) -> str:
        return f"StackedStrategy({self.outer!r}, {self.inner!r})"
