"""The built-in strategy ``full`` and memory ``buffer``, written as any plugin is.

They register through the same entry points as third-party plugins (this package's pyproject.toml), and the engine
finds them by name like any other: nothing in the core imports this part. It may import only what a plugin may:
the public names of :mod:`longctx_llm` and of :mod:`longctx_llm.runtime` (the strategy and memory contracts).
"""

from .buffer import BufferMemory
from .full import FullStrategy

__all__ = ["BufferMemory", "FullStrategy"]
