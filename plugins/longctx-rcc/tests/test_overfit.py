"""The compression path carries information: a compressor overfit on two documents reconstructs each one from its
own slots, and not from the other's."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from longctx_llm.model import hf_adapter
from longctx_rcc.compressor import RCCCompressor
from longctx_rcc.train import decoder_pass, encode_context, text_nll


def small_vocab_model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    hf_adapter.use_longctx_attention(model)
    return model.requires_grad_(False)


def accuracy(model, comp, slots_of, text):
    states = encode_context(model, comp, slots_of)
    h = decoder_pass(model, comp, states, text)[:, states.shape[1] :]
    pred = model.get_output_embeddings()(h[:, :-1]).argmax(-1)
    return (pred == text[:, 1:]).float().mean().item()


@pytest.mark.slow
def test_overfit_compressor_reconstructs_its_documents():
    model = small_vocab_model()
    comp = RCCCompressor(model, ratio=4, window=16, encoder_rank=16, slot_rank=16, encoder_projections=("attention", "mlp"))
    docs = torch.randint(0, 256, (2, 16))
    opt = torch.optim.Adam(comp.trainable().values(), lr=1e-2)
    with torch.no_grad():
        before = accuracy(model, comp, docs, docs)
    for _ in range(200):
        states = encode_context(model, comp, docs)
        loss = text_nll(model, decoder_pass(model, comp, states, docs), docs, states.shape[1], 1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        own = accuracy(model, comp, docs, docs)
        swapped = accuracy(model, comp, docs.flip(0), docs)
    assert before < 0.3 and own > 0.9, (before, own)
    assert swapped < 0.5, swapped
