"""RCC under the batch scheduler: its state encodes windows and decodes over slots with its own forward, so each
request decodes alone; concurrent sessions still get exactly their serial replies."""

import torch

from longctx_llm import Engine
from longctx_llm.model import adapters as files
from rcc_helpers import random_compressor

PROMPTS = ["Tell me about the sea and the ships on it, please.", "Count to five.", "Hello!"]


def test_rcc_sessions_under_the_scheduler_equal_serial(peaked_model, chat_runs, tmp_path):
    tiny = peaked_model()
    comp = random_compressor(tiny, ratio=4, window=16)
    comp.save(tmp_path / "c", {"base_model": {"name": "tiny", **files.model_facts(tiny.model)}}, dtype=torch.float32)
    strategy = {"name": "rcc", "ratio": 4, "window": 16, "compressor": str(tmp_path / "c")}
    serial = chat_runs.serial(Engine(tiny, strategy=strategy, batching={"max_batch": 1}), PROMPTS, turns=2, tokens=8)
    engine = Engine(tiny, strategy=strategy, batching={"max_batch": 4})
    assert chat_runs.concurrent(engine, PROMPTS, turns=2, tokens=8) == serial
