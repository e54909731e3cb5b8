"""Training samples: every kind fills its layout exactly; chat samples follow the template; facts are asked back."""

import pytest
import torch

from longctx_llm.train import TokenStream
from longctx_ccm.samples import SampleMaker


@pytest.mark.parametrize("kind", ["text", "chat", "fact"])
def test_rows_fill_the_layout(tokenizer, kind):
    ids = tokenizer("Plain English text about lists, loops and functions. " * 200, add_special_tokens=False)["input_ids"]
    maker = SampleMaker(TokenStream(torch.tensor(ids)), tokenizer, seed=0)
    batch, lens = maker.batch(kind, 3, 48, 4, torch.Generator().manual_seed(0))
    assert batch.shape == (3, sum(lens)) and len(lens) == 4
    text = tokenizer.decode(batch[0].tolist())
    if kind != "text":
        assert text.count("<|im_start|>user") == 4 and text.count("<|im_start|>assistant") == 4
    if kind == "fact":
        first, last = text.split("<|im_start|>user")[1], text.split("<|im_start|>assistant")[-1]
        secret = first.split(" is ", 1)[1].split(".")[0]
        assert secret in last and "remember" in first
