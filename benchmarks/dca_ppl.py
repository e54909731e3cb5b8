"""Perplexity on long natural text, DCA beside plain attention, at 4k..128k tokens (DCA §4.2 / issue 3).

Each length scores the first n tokens of ``--text`` with ``Engine.score`` (fed in pieces, so memory is bounded);
plain attention is given a window as long as the text so it is measured past its pretraining length (where it
blows up). Reports each DCA value's ratio to its own value at the first length (target: within 1.15).

    python benchmarks/dca_ppl.py --text data.jsonl.gz --out bench-out
    python benchmarks/dca_ppl.py --lengths 1024,2048 --device cpu       # dry run on the tutorial fixture
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from _common import header, out_dir, plot, print_table, write_json

from longctx_llm import Engine
from longctx_llm.models import ModelHandle
from longctx_llm.textdata import read_text

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pydocs_tutorial.txt"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(DEFAULT_TEXT), help=".txt, or .jsonl[.gz] with a 'text' field")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF model directory or .gguf path")
    p.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--strategies", default="full,dca")
    p.add_argument("--dca-chunk-size", type=int, default=None, help="override DCA's chunk_size")
    p.add_argument("--dca-local-window", type=int, default=None, help="override DCA's local_window")
    p.add_argument("--score-chunk", type=int, default=4096, help="tokens per scoring piece")
    p.add_argument("--tail", type=int, default=1024, help="also report the ppl of the last N tokens at each length")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    handle = ModelHandle(args.model, device=args.device, dtype=args.dtype)
    loaded = handle.get()
    text = read_text(args.text)
    ids = loaded.tokenizer(text)["input_ids"]
    if len(ids) < max(lengths):
        print(f"note: the text has {len(ids)} tokens; lengths above it are skipped", file=sys.stderr)
        lengths = [n for n in lengths if n <= len(ids)]
    specs = {}
    for name in args.strategies.split(","):
        spec = {"name": name, "max_length": max(lengths)}
        if name == "dca":
            if args.dca_chunk_size:
                spec["chunk_size"] = args.dca_chunk_size
            if args.dca_local_window:
                spec["local_window"] = args.dca_local_window
        specs[name] = spec
    rows = []
    for n in lengths:
        row = {"length": n}
        for name, spec in specs.items():
            t = time.perf_counter()
            nll = Engine(loaded, strategy=spec).score(ids[:n], chunk_size=args.score_chunk)
            row[f"{name}_ppl"] = math.exp(nll.mean().item())
            # the same final ``--tail`` tokens (those before max(lengths)) read with n tokens of context: isolates
            # the effect of the context length from the difficulty of the text
            end = max(lengths)
            tail = Engine(loaded, strategy=spec).score(ids[end - n : end], chunk_size=args.score_chunk)
            row[f"{name}_tail_ppl"] = math.exp(tail[-args.tail :].mean().item())
            row[f"{name}_s"] = time.perf_counter() - t
        rows.append(row)
        print(f"  {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "length"), flush=True)
    for name in specs:
        first = rows[0][f"{name}_ppl"]
        for r in rows:
            r[f"{name}_ratio_to_first"] = r[f"{name}_ppl"] / first
    cols = ["length"] + [f"{n}_{c}" for n in specs for c in ("ppl", "ratio_to_first", "tail_ppl", "s")]
    print()
    print_table(rows, cols)
    out = out_dir(args.out)
    info = header(str(loaded.device), model=args.model, text=str(args.text), text_tokens=len(ids),
                  pretraining_length=loaded.info.pretraining_length, strategies=specs)
    write_json(out, "dca_ppl.json", {"info": info, "rows": rows})
    plot(out, "dca_ppl.png", {n: [(r["length"], r[f"{n}_ppl"]) for r in rows] for n in specs},
         "tokens", "perplexity", f"{args.model} on {Path(args.text).name}", logy=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
