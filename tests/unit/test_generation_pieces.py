"""The small pure pieces of the loop: sampling, stop strings, UTF-8-clean incremental decoding."""

import pytest
import torch

from longctx_llm.config import GenerationConfig
from longctx_llm.runtime.generation import IncrementalDecoder, StopMatcher, sample


def _feed(matcher: StopMatcher, pieces):
    return "".join(matcher.push(p) for p in pieces)


def test_stop_matcher_across_pieces_and_holds_back_prefixes():
    m = StopMatcher(["</end>"])
    out = _feed(m, ["Hello ", "wor", "ld</", "en"])
    assert out == "Hello world"  # "</en" is held back: it may start the stop string
    assert m.matched is None
    out += m.push("d> trailing")
    assert out == "Hello world" and m.matched == "</end>" and m.text == "Hello world"


def test_stop_matcher_releases_false_alarm_and_earliest_stop_wins():
    m = StopMatcher(["ab", "xyz"])
    assert m.push("x") == ""
    assert m.push("q") == "xq"  # not a stop after all
    m2 = StopMatcher(["world", "lo"])
    m2.push("hello world")
    assert m2.matched == "lo" and m2.text == "hel"


def test_stop_matcher_without_stops_is_passthrough():
    m = StopMatcher([])
    assert m.push("abc") == "abc" and m.flush() == ""


def test_incremental_decoder_never_splits_multibyte_characters(tokenizer):
    text = "Paris 🇫🇷 café — naïve 日本語 ✓"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    dec = IncrementalDecoder(tokenizer)
    deltas = [dec.push(i) for i in ids]
    deltas.append(dec.flush())
    assert "".join(deltas) == tokenizer.decode(ids)
    assert all("\ufffd" not in d for d in deltas)


def test_sample_greedy_topk_and_seeded_sampling():
    torch.manual_seed(0)
    logits = torch.randn(3, 50)
    greedy = sample(logits, GenerationConfig(temperature=0.0))
    assert torch.equal(greedy, logits.argmax(-1))
    assert torch.equal(sample(logits, GenerationConfig(temperature=1.0, top_k=1)), greedy)
    assert torch.equal(sample(logits, GenerationConfig(temperature=1.0, top_p=1e-6)), greedy)
    cfg = GenerationConfig(temperature=1.0, top_p=0.9, top_k=20)
    a = sample(logits, cfg, torch.Generator().manual_seed(7))
    b = sample(logits, cfg, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    top20 = torch.topk(logits, 20, dim=-1).indices
    assert all(a[i] in top20[i] for i in range(3))


@pytest.mark.parametrize("bad", [{"max_new_tokens": 0}, {"temperature": -1}, {"top_p": 0}, {"stop": [""]}])
def test_generation_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        GenerationConfig(**bad)
