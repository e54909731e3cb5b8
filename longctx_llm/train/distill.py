"""Self-distillation for compressors: the reader of a compressed context learns to predict what the model itself
predicts with the whole text in its context (the teacher), beside the corpus's next token.

With the next-token loss alone a compressor learns the corpus: trained on chats whose replies are corpus text, its
memory steers the replies into the corpus's register. The teacher's distribution carries what the full context
would do instead (an assistant's reply after a system prompt, a fact stated three turns ago). ``--distill W``
trains on ``(1 - W)·NLL + W·KL(teacher ‖ reader)`` per token; ``W = 0`` is the plain next-token loss.

The KL is vocabulary-wide, so it runs in checkpointed chunks of positions: the memory is one chunk's logits, and
the backward recomputes them.
"""

from __future__ import annotations

import torch
import torch.utils.checkpoint

from longctx_llm.errors import InputError
from longctx_llm.model import hf_adapter


def add_argument(p) -> None:
    p.add_argument("--distill", type=float, default=0.0,
                   help="weight in [0, 1] of the KL to the model's own predictions with the whole text in context; "
                        "1 - it stays on the next-token loss (default: %(default)s)")


def check(weight: float) -> None:
    if not 0 <= weight <= 1:
        raise InputError(f"--distill: expected a weight from 0 to 1, got {weight}")


@torch.no_grad()
def teacher_hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """The teacher's final hidden states (B, T, H): the model itself reading ``ids`` as plain text (no adapter,
    ordinary positions)."""
    return hf_adapter.decoder(model)(input_ids=ids, use_cache=False).last_hidden_state


def _chunk(head, h, teacher_h, target):
    logp = torch.log_softmax(head(h).float(), dim=-1)
    with torch.no_grad():
        teacher = torch.log_softmax(head(teacher_h).float(), dim=-1)
    nll = -logp.gather(-1, target[:, None])[:, 0]
    kl = (teacher.exp() * (teacher - logp)).sum(-1)
    return nll.sum(), kl.sum()


def nll_and_kl(head, hidden: torch.Tensor, teacher_hidden: torch.Tensor, target: torch.Tensor,
               chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token NLL and mean KL(teacher ‖ reader) over positions.

    ``hidden`` (..., H): the reader's final hidden states (with grad); ``teacher_hidden`` (..., H): the teacher's at
    the same positions (no grad); ``target`` (...): the next tokens; ``head``: the model's output embeddings.
    """
    H = hidden.shape[-1]
    h, t, y = hidden.reshape(-1, H), teacher_hidden.detach().reshape(-1, H), target.reshape(-1)
    n = y.numel()
    if n == 0:
        raise InputError("distillation needs at least one scored position; got none (segments too short?)")
    nll = kl = h.new_zeros((), dtype=torch.float32)
    for a in range(0, n, chunk):
        c, k = torch.utils.checkpoint.checkpoint(_chunk, head, h[a : a + chunk], t[a : a + chunk], y[a : a + chunk],
                                                 use_reentrant=False)
        nll, kl = nll + c, kl + k
    return nll / n, kl / n


def mixed(nll: torch.Tensor, kl: torch.Tensor, weight: float) -> torch.Tensor:
    return (1 - weight) * nll + weight * kl
