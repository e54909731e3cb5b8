"""Round 5 of CCM (2026-12-07): the GPU run reached its time budget and saved step 10291 to its checkpoint, but was
stopped during its held-out passes (the session's device time ran out), so the trainer never wrote the adapter.
This writes it from that checkpoint, as the trainer would, with the held-out figures the adapter's tests and
README read (2 slots, concat, per source) measured here on CPU with 32 samples instead of the GPU's full pass.

    python benchmarks/results/issue23/train/ccm-round5-finish.py /work/ckpt/r15/mix-ccm /work/ckpt/ccm-r15
"""

import argparse
import sys

import torch

from longctx_ccm.adapter import CCMAdapter
from longctx_ccm.train import heldout_gap
from longctx_llm import ModelHandle
from longctx_llm.train import training

GPU_COMMAND = (
    "longctx train ccm --model /root/smol.gguf --model-name smollm2-135m-instruct --data "
    "benchmarks/train/broad-mix-ccm.yaml --out /root/train/mix-ccm --time-budget 960.0 --save-every 200 --device auto "
    "--dtype auto --seed 0 --init /root/keep/init/ccm --steps 100000 --batch 32 --segments 5 --seg-len 64,128,128,192 "
    "--comp-tokens 1,2,4,8 --comp-weights 0.15,0.4,0.2,0.25 --modes concat,merge --merge-share 0.25 --chat-share 0.3 "
    "--fact-share 0.3 --distill 0.5 --distill-kinds chat,fact --rank 32 --targets attention,mlp --lr 0.0003 "
    "--warmup 50 --eval-samples 128"
)


def main(run_dir: str, out: str, samples: int = 32) -> None:
    args = argparse.Namespace(data=["benchmarks/train/broad-mix-ccm.yaml"], data_weights=None)
    loaded = ModelHandle("smollm2-135m-instruct", device="cpu").get()
    model = loaded.model
    model.requires_grad_(False)
    corpus = training.tokenize_data(training.read_data(args), loaded.tokenizer)
    adapter = CCMAdapter(model, n_comp=8, rank=32, alpha=32.0, dropout=0.0, projections=["attention", "mlp"],
                         modes=["concat", "merge"], comp_tokens=[1, 2, 4, 8])
    params = dict(adapter.named_parameters())
    step, meta = training.Checkpoint(run_dir).load(params, None)
    adapter.eval()

    def figures(stream):
        return {"concat_k2": heldout_gap(model, adapter, stream, segments=5, seg_len=128, k=2, mode="concat",
                                         samples=samples)}

    with torch.no_grad():
        overall = figures(corpus.heldout)
        by_source = {label: figures(s) for label, s in corpus.heldout_by_source.items()}
    card = {
        "base_model": training.base_model_card(loaded, "smollm2-135m-instruct"),
        "data": corpus.info,
        "training": {
            "steps": step, "batch": 32, "segments": 5, "seg_len": [64, 128, 128, 192], "lr": 3e-4, "warmup": 50,
            "tokens": meta["tokens"], "wall_time_s": round(meta["wall_time_s"], 1), "device": "NVIDIA H200",
            "dtype": "torch.bfloat16", "torch": "2.11.0+cu130", "transformers": "5.17.0", "python": "3.12.3",
            "comp_weights": [0.15, 0.4, 0.2, 0.25], "merge_share": 0.25, "chat_share": 0.3, "fact_share": 0.3,
            "distill": 0.5, "distill_kinds": ["chat", "fact"], "command": GPU_COMMAND,
            "finished": "stopped in its held-out passes; adapter written from the step-%d checkpoint by "
                        "benchmarks/results/issue23/train/ccm-round5-finish.py (held-out figures: CPU, %d samples, "
                        "2 slots concat only)" % (step, samples),
        },
        "heldout": {"segments": 5, "seg_len": 128, "samples": samples, "device": "cpu", **overall},
        "heldout_by_source": by_source,
    }
    adapter.save(out, card)
    print(card["heldout"], by_source)


if __name__ == "__main__":
    main(*sys.argv[1:3])
