"""Passkey retrieval at 4k..64k tokens and depths 10..90%, DCA vs plain attention (DCA §4.3 / issue 3).

A random 5-digit pass key is hidden at a depth of filler text (the tutorial fixture, or ``--text``); the model is
asked for it and greedy-decodes a few tokens; success when the key appears. Plain attention is given a window as
long as the prompt so it is measured past its pretraining length too. Table: accuracy per length and strategy.

    python benchmarks/needle.py --out bench-out
    python benchmarks/needle.py --lengths 1024 --depths 10,90 --device cpu         # dry run
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from _common import header, out_dir, plot, print_table, write_json

from longctx_llm import Engine
from longctx_llm.models import ModelHandle
from longctx_llm.textdata import read_text

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pydocs_tutorial.txt"
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"


def build_prompt(tok, filler_ids: list[int], n: int, depth: float, key: str) -> str:
    needle = tok(NEEDLE.format(key=key), add_special_tokens=False)["input_ids"]
    question = tok(QUESTION, add_special_tokens=False)["input_ids"]
    body = n - len(needle) - len(question) - 8
    ctx = (filler_ids * (body // len(filler_ids) + 1))[:body]
    at = int(body * depth)
    return tok.decode(ctx[:at] + needle + ctx[at:] + question)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--text", default=str(DEFAULT_TEXT))
    p.add_argument("--lengths", default="4096,8192,16384,32768,65536")
    p.add_argument("--depths", default="10,30,50,70,90", help="percent")
    p.add_argument("--trials", type=int, default=2, help="keys per (length, depth)")
    p.add_argument("--strategies", default="full,dca")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
    tok = loaded.tokenizer
    filler = tok(read_text(args.text), add_special_tokens=False)["input_ids"]
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [int(x) / 100 for x in args.depths.split(",")]
    engines = {s: Engine(loaded, strategy={"name": s, "max_length": max(lengths) + 64}) for s in args.strategies.split(",")}
    rng = random.Random(args.seed)
    rows, details = [], []
    for n in lengths:
        row = {"length": n}
        keys = {(d, i): str(rng.randint(10000, 99999)) for d in depths for i in range(args.trials)}  # same for all
        for name, engine in engines.items():
            hits = 0
            for d in depths:
                for i in range(args.trials):
                    key = keys[(d, i)]
                    out = engine.complete(build_prompt(tok, filler, n, d, key), max_new_tokens=8).text
                    ok = key in out
                    hits += ok
                    details.append({"length": n, "depth": d, "strategy": name, "key": key, "answer": out, "ok": ok})
            row[f"{name}_acc"] = hits / (len(depths) * args.trials)
        rows.append(row)
        print(f"  {row}", flush=True)
    print()
    print_table(rows, ["length"] + [f"{s}_acc" for s in engines])
    out = out_dir(args.out)
    write_json(out, "needle.json", {"info": header(str(loaded.device), model=args.model,
                                                   pretraining_length=loaded.info.pretraining_length),
                                    "rows": rows, "trials": details})
    plot(out, "needle.png", {s: [(r["length"], r[f"{s}_acc"]) for r in rows] for s in engines},
         "prompt tokens", "pass-key accuracy", f"{args.model} passkey retrieval")
    return 0


if __name__ == "__main__":
    sys.exit(main())
