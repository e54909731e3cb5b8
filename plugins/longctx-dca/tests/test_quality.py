"""CI-sized quality check on the real SmolLM2 (DCA §4.2 in miniature).

DCA is configured as if SmolLM2's pretraining length were 1024 (chunk_size 768, local_window 128, so chunk_len 640),
then scored on ~4k tokens of real English: 6x that pretend window, so most keys are inter-chunk. Plain attention
sees the same text inside its true 8k window, so it is the quality ceiling; DCA must stay within a few percent.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from longctx_llm import Engine

TEXT = Path(__file__).resolve().parents[3] / "tests" / "data" / "pydocs_tutorial.txt"


@pytest.mark.integration
def test_dca_perplexity_close_to_plain_attention(smollm):
    ids = smollm.tokenizer(TEXT.read_text(encoding="utf-8")[:20000])["input_ids"][:4096]
    assert len(ids) == 4096
    full = Engine(smollm, strategy="full").score(ids, chunk_size=1024)
    dca_engine = Engine(
        smollm, strategy={"name": "dca", "chunk_size": 768, "local_window": 128, "pretraining_length": 1024}
    )
    dca = dca_engine.score(ids, chunk_size=1024)
    ppl_full, ppl_dca = math.exp(full.mean().item()), math.exp(dca.mean().item())
    # the first chunk (640 tokens) is plain attention under DCA: identical there
    assert abs(dca[:600].mean().item() - full[:600].mean().item()) < 1e-3
    assert ppl_dca / ppl_full < 1.05, (ppl_dca, ppl_full)
