"""RCC's inference path: plain attention below one window, the same logits as the one-pass training forward."""

import pytest
import torch

from longctx_rcc.train import decoder_pass, encode_context

from rcc_helpers import random_compressor, state


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_shorter_than_a_window_equals_plain_attention(tiny_model, arch):
    loaded = tiny_model(arch)
    st = state(loaded, random_compressor(loaded))
    ids = torch.randint(0, 1000, (1, 16))
    got = st.forward(ids, all_logits=True)
    want = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert st.windows == 0


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
@pytest.mark.parametrize("pieces", [[40], [16, 9, 15], [1] * 40])
def test_state_equals_one_pass_forward(tiny_model, arch, pieces):
    loaded = tiny_model(arch)
    comp = random_compressor(loaded)
    torch.manual_seed(3)
    ids = torch.randint(0, 1000, (1, sum(pieces)))
    st = state(loaded, comp)
    got, pos = [], 0
    for n in pieces:
        got.append(st.forward(ids[:, pos : pos + n], all_logits=True))
        pos += n
    got = torch.cat(got, dim=1)[0]
    assert st.windows == 2 and st.cache_entries == 2 * 4 + 8
    # reference: each window w read through one pass over [slots of windows < w][window w's tokens]
    with torch.no_grad():
        for w in range(3):
            text = ids[:, 16 * w : 16 * (w + 1)]
            if w == 0:
                want = loaded.model(input_ids=text).logits[0]
            else:
                states = encode_context(loaded.model, comp, ids[:, : 16 * w])
                h = decoder_pass(loaded.model, comp, states, text)[:, states.shape[1] :]
                want = loaded.model.get_output_embeddings()(h)[0]
            torch.testing.assert_close(got[16 * w : 16 * w + text.shape[1]], want, atol=2e-4, rtol=1e-4)


def _reference(loaded, comp, ids, tail, W=16):
    """Logits (T, V) of every token of ``ids`` read as RCC with ``raw_tail`` ``tail`` defines it: the token at
    position p through one pass over [slots of windows < n(p)][text from window n(p) to p], n(p) = (p - tail) // W."""
    T, out = ids.shape[1], []
    n_of = [max(0, p - tail) // W for p in range(T)]
    p = 0
    with torch.no_grad():
        while p < T:
            n = n_of[p]
            q = p
            while q < T and n_of[q] == n:
                q += 1
            text = ids[:, n * W : q]
            if n == 0:
                logits = loaded.model(input_ids=text).logits[0]
            else:
                states = encode_context(loaded.model, comp, ids[:, : n * W])
                h = decoder_pass(loaded.model, comp, states, text)[:, states.shape[1] :]
                logits = loaded.model.get_output_embeddings()(h)[0]
            out.append(logits[p - n * W :])
            p = q
    return torch.cat(out)


@pytest.mark.parametrize("tail", [3, 16, 21])
@pytest.mark.parametrize("pieces", [[60], [16, 9, 35], [1] * 60])
def test_a_raw_tail_keeps_the_last_tokens_raw(tiny_model, tail, pieces):
    """``raw_tail``: every token reads the slots of the windows that have ``tail`` tokens after them and the raw
    text from there on: one pass over exactly that, however the text is fed."""
    loaded = tiny_model("llama")
    comp = random_compressor(loaded)
    torch.manual_seed(5)
    ids = torch.randint(0, 1000, (1, sum(pieces)))
    st = state(loaded, comp, raw_tail=tail)
    got, pos = [], 0
    for n in pieces:
        got.append(st.forward(ids[:, pos : pos + n], all_logits=True))
        pos += n
    got = torch.cat(got, dim=1)[0]
    want_windows = (59 - tail) // 16
    assert st.windows == want_windows and st.cache_entries == want_windows * 4 + 60 - 16 * want_windows
    torch.testing.assert_close(got, _reference(loaded, comp, ids, tail), atol=2e-4, rtol=1e-4)
    assert st.cache_entries - (60 - 16 * want_windows) == st.slots and 60 - 16 * want_windows >= tail


@pytest.mark.parametrize("tail", [0, 7])
def test_prefill_skips_raw_windows_but_ends_the_same(tiny_model, tail):
    loaded = tiny_model("llama")
    comp = random_compressor(loaded)
    ids = torch.randint(0, 1000, (1, 45 + tail))
    a, b = state(loaded, comp, raw_tail=tail), state(loaded, comp, raw_tail=tail)
    batches, encode = [], comp.encode
    comp.encode = lambda model, windows: batches.append(windows.shape[0]) or encode(model, windows)
    last_a = a.forward(ids)  # windows 0, 1 never run raw through the decoder, and are encoded together
    assert batches == [2]
    del comp.encode
    last_b = b.forward(ids, all_logits=True)[:, -1:]
    torch.testing.assert_close(last_a, last_b, atol=1e-5, rtol=1e-5)
    assert a.windows == b.windows == 2
    nxt = torch.tensor([[7, 8, 9]])
    torch.testing.assert_close(a.forward(nxt, all_logits=True), b.forward(nxt, all_logits=True), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tail", [0, 6])
@pytest.mark.parametrize("back", [44, 38, 33, 20, 5])
def test_rewind_equals_a_fresh_state(tiny_model, back, tail):
    loaded = tiny_model("llama")
    comp = random_compressor(loaded)
    ids = torch.randint(0, 1000, (1, 50))
    st = state(loaded, comp, raw_tail=tail)
    st.forward(ids)
    st.rewind(back)
    fresh = state(loaded, comp, raw_tail=tail)
    fresh.forward(ids[:, :back])
    nxt = torch.tensor([[11, 12, 13, 14]])
    torch.testing.assert_close(st.forward(nxt, all_logits=True), fresh.forward(nxt, all_logits=True), atol=1e-5, rtol=1e-5)
    assert st.seen == fresh.seen == back + 4


@pytest.mark.parametrize("tail", [0, 9])
def test_save_restore_continues_identically(tiny_model, tail):
    loaded = tiny_model("llama")
    comp = random_compressor(loaded)
    ids = torch.randint(0, 1000, (1, 37))
    st = state(loaded, comp, raw_tail=tail)
    st.forward(ids)
    tensors, meta = st.state_dict()
    other = state(loaded, comp, raw_tail=tail)
    other.load_state_dict(tensors, meta)
    nxt = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(other.forward(nxt, all_logits=True), st.forward(nxt, all_logits=True))


def _fast_equals_eager(loaded, comp, device_tol, **fast):
    """The decoder on the preallocated cache (fixed decode steps, reader LoRA included) against DynamicCache."""
    a = state(loaded, comp, static_cache=False, cuda_graphs=False)
    b = state(loaded, comp, static_cache=True, **fast)
    dev = loaded.device
    ids = torch.randint(0, 1000, (1, 37), device=dev)

    def same(x, y):
        assert (x - y).abs().max().item() < device_tol

    same(a.forward(ids, all_logits=True), b.forward(ids, all_logits=True))
    for t in range(30):  # one token at a time across two window boundaries (compressed mid-decode)
        one = torch.tensor([[t + 5]], device=dev)
        same(a.forward(one), b.forward(one))
    assert a.windows == b.windows == 4
    for st in (a, b):
        st.rewind(40)  # back into compressed text
    nxt = torch.tensor([[3, 4, 5]], device=dev)
    same(a.forward(nxt, all_logits=True), b.forward(nxt, all_logits=True))
    tensors, meta = b.state_dict()
    c = state(loaded, comp, static_cache=True, **fast)
    c.load_state_dict(tensors, meta)
    for t in range(6):
        one = torch.tensor([[t + 9]], device=dev)
        same(a.forward(one), c.forward(one))
    return b


def test_static_cache_decode_equals_dynamic_cache(tiny_model):
    """RCC's decoder takes the fixed decode step of the preallocated cache (the CUDA default) with the same logits."""
    loaded = tiny_model("llama")
    _fast_equals_eager(loaded, random_compressor(loaded), 2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_graph_replayed_decode_with_reader_lora_equals_eager(tiny_model):
    """On CUDA the decode steps, reader LoRA inside, replay from CUDA graphs: the eager DynamicCache logits."""
    loaded = tiny_model("llama", device="cuda")
    comp = random_compressor(loaded).to("cuda")
    b = _fast_equals_eager(loaded, comp, 1e-4, cuda_graphs=True)
    assert b.decoder._graphs is not None and b.decoder._graphs.captured >= 1


@pytest.mark.parametrize("prompt_len,tail", [(37, 0), (48, 0), (37, 5), (53, 5)])  # replies cross window (+ tail) ends
def test_decoding_one_step_ahead_equals_step_by_step(tiny_model, prompt_len, tail):
    """``lookahead`` (the CUDA default) through the generation loop: the same replies, and the state ends where
    step by step ends (a window compressed one token early answers the same)."""
    from longctx_llm.config import GenerationConfig
    from longctx_llm.runtime import generate, run_to_end

    loaded = tiny_model("llama")
    comp = random_compressor(loaded)
    ids = torch.randint(0, 1000, (1, prompt_len))
    results = []
    for on in (False, True):
        st = state(loaded, comp, static_cache=True, lookahead=on, raw_tail=tail)
        assert st.lookahead is on
        replies = []
        for turn, n in enumerate((21, 1, 16)):  # three replies on one state, as a session's turns
            prompt = ids if turn == 0 else torch.tensor([[7]])
            fed = list(st.text) + prompt[0].tolist()  # what the state holds once the prompt is in (as a session)
            params = GenerationConfig(max_new_tokens=n, temperature=0.0, stop=[])
            (c,) = run_to_end(generate(st, loaded.tokenizer, prompt, None, params, frozenset(), fed_tokens=[fed]))
            assert st.seen == len(fed) and st.text == fed
            replies.append(c.token_ids)
        results.append((replies, st.seen, st.forward(torch.tensor([[3]])).float()))
    assert results[0][:2] == results[1][:2]
    torch.testing.assert_close(results[0][2], results[1][2], atol=2e-5, rtol=1e-5)
