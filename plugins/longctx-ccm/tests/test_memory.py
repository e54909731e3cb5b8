"""The ccm memory through the engine: exactness, slots, sessions, history edits, saving, bad input."""

import json

import pytest
import torch

from longctx_llm import AdapterError, ConfigError, Engine
from longctx_llm.model import hf_adapter
from longctx_llm.runtime import SLOT
from longctx_ccm.adapter import CCMAdapter

from ccm_helpers import random_adapter, save_random_adapter

TURNS = ["My name is Ada.", "I live in Paris.", "What is my name?"]


@pytest.fixture
def tiny(tiny_model):
    return tiny_model("llama", max_positions=512)


@pytest.fixture
def adapter_dir(tiny, tmp_path):
    return save_random_adapter(tiny, tmp_path / "ccm")


def ccm_engine(loaded, adapter_dir, **opts):
    """A ccm engine; ``raw_tail`` 0 unless given (slots alone behind the turns)."""
    opts.setdefault("raw_tail", 0)
    return Engine(loaded, memory={"name": "ccm", "adapter": str(adapter_dir), **opts}, generation={"max_new_tokens": 6})


def test_untrained_lora_changes_nothing(tiny):
    """Exactness: LoRA B = 0 (the untrained state) leaves every projection as the plain model computes it."""
    a = CCMAdapter(tiny.model, rank=4, projections=("attention", "mlp"))
    ids = torch.randint(0, 1000, (1, 12))
    plain = tiny.model(input_ids=ids).logits
    with hf_adapter.installed(tiny.model, a.hooks(None)):
        hooked = tiny.model(input_ids=ids).logits
    torch.testing.assert_close(hooked, plain, atol=0, rtol=0)


def test_an_acting_lora_changes_only_the_chosen_positions(tiny):
    a = random_adapter(tiny)
    ids = torch.randint(0, 1000, (1, 12))
    plain = tiny.model(input_ids=ids).logits
    with hf_adapter.installed(tiny.model, a.hooks(torch.tensor([10, 11]))):
        hooked = tiny.model(input_ids=ids).logits
    torch.testing.assert_close(hooked[:, :10], plain[:, :10], atol=0, rtol=0)  # causal: earlier positions untouched
    assert not torch.allclose(hooked[:, 10:], plain[:, 10:])


def test_first_turn_equals_plain_and_turns_become_slots(tiny, adapter_dir):
    ccm, buf = ccm_engine(tiny, adapter_dir), Engine(tiny, generation={"max_new_tokens": 6})
    assert ccm.chat(TURNS[0], session_id="s").token_ids == buf.chat(TURNS[0], session_id="s").token_ids
    s = ccm.session("s")
    assert s.memory.slots == 2 and s.state.seen == 2 and s.cached_ids == [SLOT, SLOT]
    second = ccm.chat(TURNS[1], session_id="s")
    assert s.memory.slots == 4 and s.state.seen == 4
    assert second.prompt_tokens > 20  # the whole conversation is reported, though only the new turn was fed
    assert s.memory.covered == s.token_ids


def test_merge_keeps_one_set_of_slots(tiny, adapter_dir):
    e = ccm_engine(tiny, adapter_dir, mode="merge", comp_tokens=2)
    for t in TURNS:
        e.chat(t, session_id="s")
    s = e.session("s")
    assert s.memory.slots == 2 and s.memory.turns == 3 and s.state.seen == 2


def test_max_slots_drops_the_oldest_turns(tiny, adapter_dir):
    e = ccm_engine(tiny, adapter_dir, comp_tokens=2, max_slots=4)
    for t in TURNS:
        e.chat(t, session_id="s")
    s = e.session("s")
    assert s.memory.slots == 4 and s.state.seen == 4
    assert all(k.shape[-2] == 4 for k, _ in hf_adapter.cache_kv(s.state.cache))  # the cache itself, not a counter


@pytest.mark.parametrize("tail", [3, 40])
def test_a_raw_tail_reads_the_end_of_the_compressed_text_raw(tiny, adapter_dir, tail):
    """``raw_tail``: each turn is compressed alone behind the earlier slots (the slots are those of ``raw_tail: 0``),
    and the next text reads [slots][the last ``tail`` compressed tokens][itself]: exactly what ``raw_tail: 0`` gives
    when those tokens are fed again in front of it."""
    a, b = ccm_engine(tiny, adapter_dir, raw_tail=tail), ccm_engine(tiny, adapter_dir)
    gen = torch.Generator().manual_seed(4)
    turns = [torch.randint(3, 900, (n,), generator=gen).tolist() for n in (12, 9, 30)]
    for t in turns:
        a.extend("a", t)
        b.extend("b", t)
    sa, sb = a.session("a"), b.session("b")
    covered = [x for t in turns for x in t]
    assert sa.memory.covered == sb.memory.covered == covered and sa.memory.slots == sb.memory.slots == 6
    kept = covered[-tail:]
    assert sa.state.seen == 6 + len(kept) and sa.cached_ids == [SLOT] * 6 + kept
    for (ka, va), (kb, vb) in zip(sa.state.kv_span(0, 6), sb.state.kv_span(0, 6)):
        torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
    q = torch.randint(3, 900, (7,), generator=gen).tolist()
    got = a.extend("a", q, end_turn=False, all_logits=True)
    want = b.extend("b", kept + q, end_turn=False, all_logits=True)[:, len(kept):]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tail", [0, 5])
def test_save_restore_next_turn_equals_uninterrupted(tiny, adapter_dir, tmp_path, tail):
    a = ccm_engine(tiny, adapter_dir, raw_tail=tail)
    for t in TURNS[:2]:
        a.chat(t, session_id="s")
    a.save_session("s", tmp_path / "saved")
    b = ccm_engine(tiny, adapter_dir, raw_tail=tail)
    b.load_session(tmp_path / "saved")
    want = a.chat(TURNS[2], session_id="s")
    got = b.chat(TURNS[2], session_id="s")
    assert got.token_ids == want.token_ids
    assert b.session("s").memory.slots == a.session("s").memory.slots == 6


@pytest.mark.parametrize("tail", [0, 6])
def test_a_whole_history_at_once_is_compressed_turn_by_turn(tiny, adapter_dir, tail):
    e = ccm_engine(tiny, adapter_dir, raw_tail=tail)
    history = [
        {"role": "user", "content": TURNS[0]}, {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": TURNS[1]}, {"role": "assistant", "content": "Nice city."},
        {"role": "user", "content": TURNS[2]},
    ]
    e.chat(history, session_id="s")
    s = e.session("s")
    assert s.memory.slots == 6  # three finished turns, two slots each
    assert s.state.seen == 6 + tail and s.cached_ids[6:] == s.memory.covered[len(s.memory.covered) - tail:]


def test_an_edited_history_rebuilds_the_memory(tiny, adapter_dir):
    e = ccm_engine(tiny, adapter_dir)
    e.chat(TURNS[0], session_id="s")
    e.chat(TURNS[1], session_id="s")
    edited = [{"role": "user", "content": "My name is Bob."}, {"role": "assistant", "content": "Hi Bob."},
              {"role": "user", "content": TURNS[2]}]
    fresh = ccm_engine(tiny, adapter_dir)
    assert e.chat(edited, session_id="s").token_ids == fresh.chat(edited, session_id="t").token_ids
    assert e.session("s").memory.slots == fresh.session("t").memory.slots == 4


def test_threads_keep_separate_memories(tiny, adapter_dir):
    e = ccm_engine(tiny, adapter_dir)
    e.chat(TURNS[0], session_id="a")
    e.chat(TURNS[1], session_id="b")
    e.chat(TURNS[2], session_id="b")
    assert e.session("a").memory.slots == 2 and e.session("b").memory.slots == 4


# ---- bad input: clear errors before any session is touched --------------------------------------------------------


def test_comp_tokens_must_be_positive():
    with pytest.raises(ConfigError, match="comp_tokens"):
        Engine(memory={"name": "ccm", "comp_tokens": 0})


def test_untrained_slot_count_or_mode_is_refused(tiny, tmp_path):
    d = save_random_adapter(tiny, tmp_path / "a", modes=("concat",), comp_tokens=(2,))
    with pytest.raises(AdapterError, match="comp_tokens: 4 .*trained: 2"):
        ccm_engine(tiny, d, comp_tokens=4).session("s")
    with pytest.raises(AdapterError, match="merge"):
        ccm_engine(tiny, d, mode="merge").session("s")


def test_adapter_for_another_model_is_refused(tiny, tiny_model, tmp_path):
    other = tiny_model("llama", hidden_size=32, num_attention_heads=2)
    d = save_random_adapter(other, tmp_path / "other")
    e = ccm_engine(tiny, d)
    with pytest.raises(AdapterError, match="hidden_size 32"):
        e.chat("hi", session_id="s")
    assert e.sessions() == []


def test_missing_and_corrupted_adapters_are_refused(tiny, adapter_dir, tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        ccm_engine(tiny, tmp_path / "nowhere").session("s")
    weights = sorted(adapter_dir.glob("*.safetensors"))[0]
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="corrupted"):
        ccm_engine(tiny, adapter_dir).session("s")


def test_a_card_naming_another_base_hash_is_refused(tiny, adapter_dir):
    from longctx_ccm.adapter import CCMAdapter

    card = json.loads((adapter_dir / "adapter.json").read_text())
    card["base_model"]["sha256"] = "0" * 64
    (adapter_dir / "adapter.json").write_text(json.dumps(card))
    with pytest.raises(AdapterError, match="hash"):
        CCMAdapter.load(adapter_dir, tiny.model, fingerprint="f" * 64)


@pytest.mark.parametrize("strategy", ["dca", [{"name": "full"}, {"name": "dca"}]])
def test_strategies_whose_cache_cannot_be_edited_are_refused(tiny, adapter_dir, strategy):
    e = Engine(tiny, strategy=strategy, memory={"name": "ccm", "adapter": str(adapter_dir)})
    with pytest.raises(ConfigError, match="cannot run with strategy"):
        e.session("s")


def test_no_default_adapter_for_a_model_without_one(tiny):
    with pytest.raises(AdapterError, match="no trained CCM adapter"):
        Engine(tiny, memory="ccm").session("s")
