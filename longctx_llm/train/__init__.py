"""What every adapter trainer shares (``longctx train ccm``, ``longctx train rcc``); the trainers are plugins.

- :mod:`.datamix`: the training text: ``--data`` files mixed by weight, each file's held-out split, token streams
  (:class:`TokenStream`);
- :mod:`.training`: options every trainer takes, checkpoints that resume, the step budget, learning-rate schedule,
  progress lines and the adapter card's record of the base model and the run;
- :mod:`.distill`: self-distillation, the KL to the model's own predictions with the whole text in context
  (``--distill``);
- :mod:`.interpolate`: the weights between two adapters of one lineage (``python -m longctx_llm.train.interpolate``;
  not imported here, so it runs as a module without a second copy).

May import: torch, :mod:`longctx_llm.errors`, :mod:`longctx_llm.model` (adapter files, the model's facts) and
:mod:`longctx_llm.eval` (text reading and its held-out split: one definition, so an evaluation of held-out text never
reads what an adapter was trained on). Not the runtime's engine: a trainer drives the model directly.
"""

from . import datamix, distill, training
from .datamix import TokenStream

__all__ = ["TokenStream", "datamix", "distill", "training"]
