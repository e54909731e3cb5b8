"""Decode tokens/s with tensor parallel (``model.tp``) against one device: the embedded SmolLM2 and a random-weight
Llama-3-8B-shaped model, each loaded from a HF folder as a pipeline would (``model: {source: DIR, tp: N}``).

Two steps (``bash benchmarks/gpu.sh tp`` runs both on a machine of several GPUs):

    python benchmarks/tp_decode.py prepare --folders /root/tp-models           # the two HF folders, once
    python benchmarks/tp_decode.py run --folders /root/tp-models --out bench-out            # tp 1
    torchrun --standalone --nproc-per-node 2 benchmarks/tp_decode.py run --folders /root/tp-models --out bench-out

Under torchrun every process runs this same script (no process leads: ``evaluate.speed`` drives each process's
engine alike) and rank 0 writes ``tp_decode_tp{N}.json`` and prints its rows. A model whose heads ``tp`` does not
divide is skipped with the error (SmolLM2 has 9 attention heads and 3 key/value heads: tp 3, not 2). The tables of
all runs: ``python benchmarks/tp_decode.py table --out bench-out``.

A CPU dry run of the same steps (gloo, a small shape): ``--device cpu --hidden 256 --intermediate 512 --heads 8
--kv-heads 4 --vocab 49152 --layers 2 --lengths 256 --decode-tokens 8``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_model_shape_args, header, out_dir, print_table, random_llama  # noqa: E402

COLUMNS = ["model", "tp", "length", "prefill_s", "decode_tokens_per_s", "peak_memory_mib", "error"]


def prepare(args) -> None:
    """Write the embedded model's converted folder (its GGUF de-quantised) and the 8B-shaped random folder."""
    import torch

    from longctx_llm import ModelHandle

    root = Path(args.folders)
    smol = ModelHandle(args.model, device="cpu", dtype="float32").get()
    if not (root / "smollm2" / "config.json").is_file():
        smol.model.save_pretrained(str(root / "smollm2"))
        smol.tokenizer.save_pretrained(str(root / "smollm2"))
    if not (root / "llama-8b-shape" / "config.json").is_file():
        big = random_llama(args, smol.tokenizer, "cpu", torch.bfloat16)
        big.model.save_pretrained(str(root / "llama-8b-shape"))
        smol.tokenizer.save_pretrained(str(root / "llama-8b-shape"))
    print(f"folders ready under {root}")


def run(args) -> None:
    from longctx_llm import ConfigError, Engine
    from longctx_llm.config import parse_config
    from longctx_llm.eval import evaluate

    tp = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    lengths = [int(n) for n in args.lengths.split(",")]
    ids = list(range(1000, 1000 + 4096))
    rows = []
    for name in ("smollm2", "llama-8b-shape"):
        source = str(Path(args.folders) / name)
        cfg = parse_config({"model": {"source": source, "device": args.device, "dtype": args.dtype, "tp": tp},
                            "strategy": {"name": args.strategy}})
        engine = Engine.from_config(cfg)
        try:
            evaluate.speed(engine, ids, lengths[:1], decode_tokens=4)  # warm-up: kernels, allocator, plans
            out = evaluate.speed(engine, ids, lengths, decode_tokens=args.decode_tokens)
        except ConfigError as e:  # tp does not divide this model's heads
            out = [{"error": str(e)}]
        rows += [{"model": name, "tp": tp, **r} for r in out]
    if rank == 0:
        import torch

        print_table(rows, COLUMNS)
        out = out_dir(args.out)
        device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
        data = {"info": header(device, tp=tp, strategy=args.strategy, dtype=args.dtype), "rows": rows}
        (out / f"tp_decode_tp{tp}.json").write_text(json.dumps(data, indent=2))


def table(args) -> None:
    rows = []
    for path in sorted(Path(args.out).glob("tp_decode_tp*.json")):
        rows += json.loads(path.read_text())["rows"]
    rows.sort(key=lambda r: (r["model"], r.get("length", 0), r["tp"]))
    print_table(rows, COLUMNS)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=("prepare", "run", "table"))
    p.add_argument("--folders", default="tp-models", help="where the two HF model folders are (or go)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="prepare: the embedded model (alias or .gguf)")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--device", default="auto", help="auto: each process's GPU (cuda:LOCAL_RANK), else the CPU")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--strategy", default="full")
    p.add_argument("--lengths", default="512,4096")
    p.add_argument("--decode-tokens", type=int, default=128)
    add_model_shape_args(p, layers=32)
    args = p.parse_args(argv)
    {"prepare": prepare, "run": run, "table": table}[args.step](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
