"""Bring a training run's checkpoint home when the run cannot finish inside the device time (issue 23).

A checkpoint holds the trainable weights and the optimizer's two moments (twice the weights' size), too much for what
one device call returns. ``split`` (on the GPU machine, via ``bash benchmarks/gpu.sh mix-rescue``) writes the weights
alone, in shards of at most 15 MB, with each run's checkpoint card; ``join`` (here) writes them back as
``DIR/checkpoint`` of a run folder. The run's own ``longctx train`` command, given ``--steps`` equal to the saved step
and ``--device cpu``, then resumes there, trains nothing, and writes the adapter with its held-out figures. Its
optimizer starts fresh if trained on: the moments stay behind. That resume saves the checkpoint again with the CPU
run's arguments: the GPU run's command for the card comes from the rescued card (``NAME.adapter.json``).

    python benchmarks/train/rescue_checkpoint.py split /root/train/mix-ccm /root/train/mix-rcc --to /root/rescue
    python benchmarks/train/rescue_checkpoint.py join FILES... --to /work/ckpt/r16   # -> r16/mix-ccm, r16/mix-rcc
"""

from __future__ import annotations

import argparse
import shutil
from collections import defaultdict
from pathlib import Path

SHARD_BYTES = 15_000_000


def split(runs: list[str], to: str) -> None:
    from longctx_llm.model import adapters

    out = Path(to)
    out.mkdir(parents=True, exist_ok=True)
    for run in map(Path, runs):
        ckpt = run / "checkpoint"
        if not (ckpt / adapters.CARD).is_file():
            print(f"{run}: no checkpoint, skipped")
            continue
        tensors, card = adapters.load_adapter(ckpt, kind="checkpoint")  # row blocks of large tensors joined
        weights = {k: v for k, v in tensors.items() if k.startswith("param.")}  # the optimizer's moments stay behind
        keep = {k: card[k] for k in ("kind", "step", "adam_steps", "meta")}
        folder = adapters.save_adapter(out / f".{run.name}", weights, keep, max_bytes=SHARD_BYTES)
        for f in sorted(folder.iterdir()):  # flat names: one folder of files comes back per call
            f.rename(out / f"{run.name}.{f.name}")
        folder.rmdir()
        print(f"{run.name}: step {card['step']}, {len(weights)} tensors")


def join(files: list[str], to: str) -> None:
    from longctx_llm.model import adapters

    groups = defaultdict(list)
    for f in map(Path, files):
        name, _, rest = f.name.partition(".")
        groups[name].append((f, rest))
    for name, parts in groups.items():
        if not any(rest == adapters.CARD for _, rest in parts):
            raise SystemExit(f"{name}: weights but no {adapters.CARD} among the files")
        staging = Path(to) / f".{name}-parts"
        staging.mkdir(parents=True, exist_ok=True)
        for f, rest in parts:
            shutil.copyfile(f, staging / rest)
        tensors, card = adapters.load_adapter(staging, kind="checkpoint")  # every file's hash checked
        keep = {k: card[k] for k in ("kind", "step", "adam_steps", "meta")}
        target = adapters.save_adapter(Path(to) / name / "checkpoint", tensors, keep)
        shutil.rmtree(staging)
        print(f"{name}: step {card['step']}, {len(tensors)} tensors -> {target}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["split", "join"])
    p.add_argument("paths", nargs="+", help="split: run folders; join: the shard and card files")
    p.add_argument("--to", required=True)
    a = p.parse_args()
    (split if a.action == "split" else join)(a.paths, a.to)


if __name__ == "__main__":
    main()
