"""Self-distillation's loss (longctx_llm.train.distill): the mean NLL and KL over positions, in chunks or not."""

import pytest
import torch

from longctx_llm.errors import InputError
from longctx_llm.train import distill


def _case(seed=0, n=13, hdim=6, vocab=11):
    torch.manual_seed(seed)
    head = torch.nn.Linear(hdim, vocab, bias=False)
    return head, torch.randn(2, n, hdim, requires_grad=True), torch.randn(2, n, hdim), torch.randint(0, vocab, (2, n))


def test_nll_and_kl_are_the_means_over_positions():
    head, h, t, y = _case()
    nll, kl = distill.nll_and_kl(head, h, t, y, chunk=4)
    logits = head(h)
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits.transpose(1, 2), y))
    want = torch.nn.functional.kl_div(logits.log_softmax(-1), head(t).log_softmax(-1), log_target=True,
                                      reduction="none").sum(-1).mean()
    torch.testing.assert_close(kl, want)
    _, self_kl = distill.nll_and_kl(head, t, t, y)
    assert abs(self_kl.item()) < 1e-6  # a reader that predicts as the teacher does has no KL
    torch.testing.assert_close(distill.mixed(nll, kl, 0.25), 0.75 * nll + 0.25 * kl)


def test_chunks_give_the_gradient_of_one_pass_and_none_reaches_the_teacher():
    grads = []
    for chunk in (3, 1000):
        head, h, t, y = _case()
        t.requires_grad_(True)
        nll, kl = distill.nll_and_kl(head, h, t, y, chunk=chunk)
        distill.mixed(nll, kl, 0.5).backward()
        assert t.grad is None
        grads.append((h.grad.clone(), head.weight.grad.clone()))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_no_scored_position_is_a_clear_error():
    head, h, t, y = _case()
    with pytest.raises(InputError, match="at least one scored position"):
        distill.nll_and_kl(head, h[:, :0], t[:, :0], y[:, :0])


@pytest.mark.parametrize("bad", [-0.5, 1.01])
def test_a_weight_outside_0_1_is_refused(bad):
    with pytest.raises(InputError, match=f"--distill: expected a weight from 0 to 1, got {bad}"):
        distill.check(bad)
