"""A real uvicorn server on a free port, over a tiny random-weight engine, once per test module."""

from __future__ import annotations

import pytest

API_KEY = "test-key"  # the test modules use the same two names
MODEL = "tiny-llama"


def tiny_engine(tokenizer, max_positions: int = 256, max_new_tokens: int = 6):
    """A 1-layer random Llama with the SmolLM2 vocabulary: greedy by default, a short reply, a small window."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from longctx_llm import Engine
    from longctx_llm.model import wrap_model

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=max_positions,
                      eos_token_id=2, bos_token_id=1, pad_token_id=2)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return Engine(wrap_model(model, tokenizer, source=MODEL),
                  generation={"max_new_tokens": max_new_tokens, "temperature": 0.0})


@pytest.fixture(scope="module")
def engine(tokenizer):
    return tiny_engine(tokenizer)


@pytest.fixture(scope="module")
def server(engine):
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    with LiveServer(create_app(engine, api_key=API_KEY, model_name=MODEL)) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=60)
