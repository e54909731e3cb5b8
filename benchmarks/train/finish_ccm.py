"""Write a CCM adapter from a run's checkpoint when the run could not finish on the GPU (issue 23).

A run stopped in its held-out passes (the session's device time ran out) leaves its last step in ``checkpoint/``; the
trainer's own passes (about 50 figures) take an hour on two CPU cores. This writes the adapter as the trainer would,
with the card's figures the tests and READMEs read (2 slots, concat, overall and per source) measured here on CPU, and
the GPU run's command rebuilt from the checkpoint's recorded arguments. Bring the checkpoint home first
(``benchmarks/train/rescue_checkpoint.py``) and run this on it as it came: a ``longctx train`` resume on CPU saves the
checkpoint again with its own (CPU) arguments.

    python benchmarks/train/finish_ccm.py /work/ckpt/r16/mix-ccm /work/ckpt/ccm-r16 \
        --data benchmarks/train/broad-mix-ccm.yaml --device-name "NVIDIA H100 80GB HBM3"
"""

from __future__ import annotations

import argparse
import json

import torch

from longctx_ccm.adapter import CCMAdapter
from longctx_ccm.train import heldout_gap
from longctx_llm import ModelHandle
from longctx_llm.model import adapters
from longctx_llm.train import training

#: the GPU image the runs train in (benchmarks/README.md)
GPU_ENV = {"dtype": "torch.bfloat16", "torch": "2.11.0+cu130", "transformers": "5.17.0", "python": "3.12.3"}


def ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="the run's folder (its checkpoint/ inside)")
    p.add_argument("out", help="where the adapter goes")
    p.add_argument("--data", required=True, action="append", help="the run's --data (its card records the mix)")
    p.add_argument("--device-name", required=True, help="the GPU the run trained on")
    p.add_argument("--samples", type=int, default=32)
    a = p.parse_args()

    _, ckpt_card = adapters.load_adapter(f"{a.run_dir}/checkpoint", kind="checkpoint")
    meta, run = ckpt_card["meta"], dict(ckpt_card["meta"]["args"])
    loaded = ModelHandle("smollm2-135m-instruct", device="cpu").get()
    model = loaded.model
    model.requires_grad_(False)
    corpus = training.tokenize_data(training.read_data(argparse.Namespace(data=a.data, data_weights=None)),
                                    loaded.tokenizer)
    comp = ints(run["comp_tokens"])
    modes = run["modes"].split(",")
    rank = int(run["rank"])
    adapter = CCMAdapter(model, n_comp=max(comp), rank=rank, alpha=float(run.get("alpha") or rank), dropout=0.0,
                         projections=run["targets"].split(","), modes=modes, comp_tokens=comp)
    step, _ = training.Checkpoint(a.run_dir).load(dict(adapter.named_parameters()), None)
    adapter.eval()

    def figures(stream):
        return {"concat_k2": heldout_gap(model, adapter, stream, segments=int(run["segments"]), seg_len=128, k=2,
                                         mode="concat", samples=a.samples)}

    with torch.no_grad():
        overall = figures(corpus.heldout)
        by_source = {label: figures(s) for label, s in corpus.heldout_by_source.items()}
    command = training.command_line("ccm", argparse.Namespace(**{**run, "data": a.data}))
    card = {
        "base_model": training.base_model_card(loaded, "smollm2-135m-instruct"),
        "data": corpus.info,
        "training": {
            "steps": step, "batch": int(run["batch"]), "segments": int(run["segments"]),
            "seg_len": ints(run["seg_len"]), "lr": float(run["lr"]), "warmup": int(run["warmup"]),
            "tokens": meta["tokens"], "wall_time_s": round(meta["wall_time_s"], 1), "device": a.device_name,
            **GPU_ENV, "comp_weights": [float(x) for x in run["comp_weights"].split(",")],
            "merge_share": run["merge_share"], "chat_share": run["chat_share"], "fact_share": run["fact_share"],
            "distill": run["distill"], "distill_kinds": run["distill_kinds"].split(","), "command": command,
            "finished": "stopped in its held-out passes; adapter written from the step-%d checkpoint by "
                        "benchmarks/train/finish_ccm.py (held-out figures: CPU, %d samples, 2 slots concat only)"
                        % (step, a.samples),
        },
        "heldout": {"segments": int(run["segments"]), "seg_len": 128, "samples": a.samples, "device": "cpu", **overall},
        "heldout_by_source": by_source,
    }
    adapter.save(a.out, card)
    print(json.dumps({"heldout": card["heldout"], "by_source": by_source}, indent=1))


if __name__ == "__main__":
    main()
