"""Compressed Context Memory (CCM, ICLR'24) for longctx-llm: past turns kept as a few key/value slots each.

``memory: {name: ccm, mode: concat, comp_tokens: 2}`` in a pipeline. After each finished turn, ``comp_tokens``
compression tokens are run after the turn with a conditional LoRA (active only at their positions); their keys and
values replace the turn in the session's cache. See README.md for the layout, positions and measured figures.
"""

from .adapter import CCMAdapter
from .memory import CCMMemory, CCMState
from .options import CCMOptions

__all__ = ["CCMAdapter", "CCMMemory", "CCMOptions", "CCMState"]
