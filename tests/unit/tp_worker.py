"""One process of the two-process tensor-parallel tests (tests/unit/test_tensor_parallel_processes.py), started by
``python -m torch.distributed.run --nproc-per-node 2 tp_worker.py MODE MODEL_DIR OUT_DIR``.

- ``logits [COMPRESSOR]``: every rank runs the same code (a script of one's own under torchrun) and saves, per
  strategy (and ``rcc`` with the compressor folder given), the logits of a prefill and of decode steps through
  ``load_pipeline`` with ``model: {tp: 2}``, and those of a forward with LoRA hooks on every projection;
- ``protocol``: rank 0 drives an engine as the CLI does (leading), the other rank follows
  (``tensor_parallel.run_command``); each rank saves its sessions' histories.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

import torch

STRATEGIES = {
    "full": {"name": "full"},
    "dca": {"name": "dca", "chunk_size": 48, "local_window": 8, "prefill_chunk_size": 40},
    "streaming": {"name": "streaming", "sink_tokens": 4, "window": 48},
}
PROMPT = list(range(300, 450))  # 150 tokens: DCA sees 3 chunks, StreamingLLM evicts
DECODE = [501, 502, 503, 504, 505]


def rcc_strategy(compressor: str) -> dict:
    """RCC with a random compressor (:func:`make_compressor`): 150 tokens are 4 windows of 32 compressed 8 times."""
    return {"name": "rcc", "compressor": compressor, "window": 32, "ratio": 8, "encode_batch": 2,
            "prefill_chunk_size": 40}


def make_compressor(model_dir: str, path: str) -> None:
    """A random RCC compressor (encoder, slot and reader LoRA, bridges all acting) for the tiny model, saved."""
    from longctx_rcc.compressor import RCCCompressor

    from longctx_llm import ModelHandle
    from longctx_llm.model import adapters

    model = ModelHandle(model_dir, "cpu", "float32").get().model
    torch.manual_seed(2)
    comp = RCCCompressor(model, ratio=8, window=32, encoder_rank=4, slot_rank=4, reader_rank=4,
                         encoder_projections=("attention", "mlp"))
    with torch.no_grad():
        for name, param in comp.named_parameters():
            if "bridge" in name or ".b." in name:
                param.normal_(0, 0.05)
    comp.save(path, {"base_model": {"name": "tiny", **adapters.model_facts(model)}}, dtype=torch.float32)


def pipeline(model_dir: str, strategy: dict, tp: int) -> dict:
    return {"model": {"source": model_dir, "device": "cpu", "dtype": "float32", "tp": tp}, "strategy": strategy,
            "generation": {"max_new_tokens": 6}}


def strategy_logits(model_dir: str, strategy: dict, tp: int) -> torch.Tensor:
    """Logits (T, V) of the prompt and then of each decode token fed alone, through the pipeline's engine."""
    from longctx_llm import load_pipeline

    engine = load_pipeline(pipeline(model_dir, strategy, tp)).engine
    state = engine.strategy.new_state(engine.loaded, 1)
    out = [state.forward(torch.tensor([PROMPT]), all_logits=True)[0]]
    for t in DECODE:
        out.append(state.forward(torch.tensor([[t]]))[0, -1:])
    return torch.cat(out).float()


def lora_logits(model_dir: str, tp: int) -> torch.Tensor:
    """Logits of one forward with a random LoRA delta on every attention and MLP projection (CCM's and RCC's hooks)."""
    from longctx_llm import ModelHandle
    from longctx_llm.model import LoRA, hf_adapter

    model = ModelHandle(model_dir, "cpu", "float32", tp=tp).get().model
    torch.manual_seed(1)
    lora = LoRA(model, ("attention", "mlp"), 4, 4.0)
    with torch.no_grad():
        for b in lora.b.values():
            b.normal_(0, 0.05)
    ids = torch.tensor([PROMPT[:40]])
    pos = torch.arange(40)[None]
    with torch.inference_mode():
        ctx = hf_adapter.AttentionContext(q_positions=pos)
        logits = hf_adapter.forward(model, ids, position_ids=pos, cache=None, ctx=ctx, logits_to_keep=0,
                                    hooks=lora.hooks(index=torch.tensor([3, 7, 30])))
    return logits[0].float()


def run_logits(model_dir: str, out: Path, tp: int, rank: int, compressor: str = "") -> None:
    strategies = {**STRATEGIES, **({"rcc": rcc_strategy(compressor)} if compressor else {})}
    for name, spec in strategies.items():
        torch.save(strategy_logits(model_dir, spec, tp), out / f"{name}_rank{rank}.pt")
    torch.save(lora_logits(model_dir, tp), out / f"lora_rank{rank}.pt")


# ---- protocol ---------------------------------------------------------------------------------------------------


def drive(engine) -> dict:
    """What rank 0 does with its engine (the sequence a server or the CLI could make); returns its replies."""
    replies = {}
    replies["a1"] = engine.chat("Hello there", session_id="a").text
    s = engine.stream_chat("Tell me more", session_id="a", max_new_tokens=8)
    next(s, None)
    next(s, None)
    s.close()  # an early close: every rank stops at the same token
    replies["a2"] = engine.chat("And then?", session_id="a").text
    replies["b1"] = engine.chat("Sample something", session_id="b", temperature=1.0, max_new_tokens=8).text
    replies["b2"] = engine.chat("Again", session_id="b").text
    replies["complete"] = engine.complete("Once upon a time").text
    replies["score"] = [round(float(x), 5) for x in engine.score(PROMPT[:30])]
    dropped = engine.stream_chat("Dropped", session_id="d")
    next(dropped, None)
    del dropped  # let go unclosed: closed on the followers at the next step
    replies["d"] = engine.chat("After the drop", session_id="d").text
    # two requests on one session at once: the second waits for the first's stream, outside the step lock
    first = engine.stream_chat("First", session_id="c", max_new_tokens=6)
    second: dict = {}
    t = threading.Thread(target=lambda: second.setdefault("text", engine.chat("Second", session_id="c").text))
    t.start()
    time.sleep(0.5)
    replies["c1"] = "".join(first)
    t.join(timeout=120)
    replies["c2"] = second.get("text", "<timed out>")
    engine.reset_session("a")
    replies["a3"] = engine.chat("Hello there", session_id="a").text
    return replies


def histories(engine) -> dict:
    return {sid: engine.session(sid).history for sid in sorted(engine.sessions())}


def run_protocol(model_dir: str, out: Path, rank: int) -> None:
    from longctx_llm.config import parse_config
    from longctx_llm.runtime import Engine, tensor_parallel

    built = []

    def build(config):
        built.append(Engine.from_config(config))
        return built[-1]

    def command() -> int:
        engine = Engine.from_config(parse_config(pipeline(model_dir, {"name": "full"}, 2)))
        replies = drive(engine)
        (out / "replies.json").write_text(json.dumps(replies))
        (out / "histories_rank0.json").write_text(json.dumps(histories(engine)))
        return 0

    code = tensor_parallel.run_command(command, build)
    if rank:
        (out / f"histories_rank{rank}.json").write_text(json.dumps(histories(built[0])))
    sys.exit(code)


if __name__ == "__main__":
    mode, model_dir, out_dir = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    if mode == "logits":
        run_logits(model_dir, Path(out_dir), 2, rank, *sys.argv[4:5])
    else:
        run_protocol(model_dir, Path(out_dir), rank)
