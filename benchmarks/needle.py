"""Passkey retrieval at 4k..64k tokens and depths 10..90%, DCA vs plain attention (DCA §4.3 / issue 3).

A random 5-digit pass key, in the line "The pass key is NNNNN. Remember it. NNNNN is the pass key.", is hidden at a
depth of filler; the prompt ends "What is the pass key? The pass key is" and the model greedy-decodes a few
tokens; success when the key appears in them. Fillers (``--filler``, one or both in one run):

- ``repeat`` (the classic test of Landmark Attention and DCA §4.3): the header "There is an important info hidden
  inside a lot of irrelevant text. ..." then "The grass is green. The sky is blue. ..." repeated;
- ``text``: natural text (the tutorial fixture, or ``--text``) repeated as needed, with no header.

The same keys serve every strategy and filler. The prompt is a raw completion by default (``--format chat`` wraps
the header, filler and question in the model's chat template as one user turn and starts the answer with "The pass
key is"); either way it is the same for every strategy. Plain attention is given a window as long as the longest
prompt, so it is measured past its pretraining length too. Table: accuracy per length, strategy and filler, then
per depth.

    python benchmarks/needle.py --filler repeat,text --text data.jsonl.gz --out bench-out
    python benchmarks/needle.py --lengths 1024 --depths 10,90 --trials 1 --filler repeat,text \\
        --dca-pretraining-length 512 --device cpu           # dry run, DCA chunking as if L were 512
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from _common import add_variant_args, header, out_dir, plot, print_table, variant_specs, write_json

from longctx_llm import Engine, ModelHandle
from longctx_llm.eval import read_text

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pydocs_tutorial.txt"
HEADER = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
          "I will quiz you about the important information there.\n")
REPEAT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
ASK = "\nWhat is the pass key?"
ANSWER = " The pass key is"
MARGIN = 8  # tokens left below the target length (re-tokenizing decoded text may add a few)


class PromptMaker:
    """Prompts of about ``n`` tokens with the key at a depth, for one filler and one format."""

    def __init__(self, engine: Engine, filler: str, fmt: str, text_ids: list[int] | None):
        self.engine, self.filler, self.fmt, self.text_ids = engine, filler, fmt, text_ids
        self.unit = engine.count_tokens(" " + REPEAT)

    def wrap(self, before: str, after: str, key: str) -> str:
        head = HEADER if self.filler == "repeat" else ""
        body = f"{head}{before}{NEEDLE.format(key=key)}{after}{ASK}"
        if self.fmt == "raw":
            return body + ANSWER
        return self.engine.render_chat([{"role": "user", "content": body}]) + ANSWER.lstrip()

    def __call__(self, n: int, depth: float, key: str) -> str:
        budget = n - len(self.engine.tokenize(self.wrap("", "", key))) - MARGIN
        if self.filler == "repeat":
            reps = budget // self.unit
            at = round(reps * depth)
            return self.wrap(" ".join([REPEAT] * at), " ".join([REPEAT] * (reps - at)), key)
        ids = self.text_ids
        ctx = (ids * (budget // len(ids) + 1))[:budget]
        at = int(budget * depth)
        tok = self.engine.tokenizer
        return self.wrap(tok.decode(ctx[:at]), tok.decode(ctx[at:]), key)


def key_nll(engine: Engine, prompt: str, key: str) -> float:
    """Mean NLL of the key's tokens right after the prompt (the prompt ends "The pass key is")."""
    ids = engine.tokenize(prompt)
    key_ids = engine.tokenize(" " + key, add_special_tokens=False)
    nll = engine.score(ids + key_ids, chunk_size=2048)  # (len - 1,): NLL of tokens 1..
    return float(nll[-len(key_ids):].mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--filler", default="repeat", help="repeat (classic), text (natural text), or repeat,text")
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="the text filler: .txt, or .jsonl[.gz] with 'text'")
    p.add_argument("--format", default="raw", choices=("raw", "chat"), help="raw completion or the chat template")
    p.add_argument("--lengths", default="4096,8192,16384,32768,65536")
    p.add_argument("--depths", default="10,30,50,70,90", help="percent")
    p.add_argument("--trials", type=int, default=2, help="keys per (length, depth)")
    add_variant_args(p, default="full,dca")
    p.add_argument("--new-tokens", type=int, default=8, help="greedy tokens decoded after the question")
    p.add_argument("--key-nll", action="store_true",
                   help="also score the key after the prompt (teacher-forced): mean NLL per key token, a graded "
                        "measure beside the all-or-nothing greedy answer (costs one more prefill per trial)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    fillers = [f.strip() for f in args.filler.split(",") if f.strip()]
    if not fillers or any(f not in ("repeat", "text") for f in fillers):
        raise SystemExit(f"--filler: expected repeat, text or repeat,text, got {args.filler!r}")
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [int(x) / 100 for x in args.depths.split(",")]
    specs = variant_specs(args, max(lengths) + 64)
    loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
    engines = {name: Engine(loaded, strategy=spec) for name, spec in specs.items()}
    text_ids = None
    if "text" in fillers:
        text_ids = loaded.tokenizer(read_text(args.text), add_special_tokens=False)["input_ids"]
    any_engine = next(iter(engines.values()))
    makers = {f: PromptMaker(any_engine, f, args.format, text_ids) for f in fillers}
    combos = [(s, f) for f in fillers for s in engines]
    out = out_dir(args.out)
    info = header(str(loaded.device), model=args.model, pretraining_length=loaded.info.pretraining_length,
                  fillers=fillers, text=str(args.text) if text_ids is not None else None, format=args.format,
                  depths=depths, trials=args.trials, new_tokens=args.new_tokens, seed=args.seed, variants=specs)
    rng = random.Random(args.seed)
    rows, details = [], []
    for n in lengths:
        row = {"length": n}
        keys = {(d, i): str(rng.randint(10000, 99999)) for d in depths for i in range(args.trials)}  # same for all
        for f in fillers:
            prompts = {k: makers[f](n, k[0], key) for k, key in keys.items()}
            sizes = [any_engine.count_tokens(pr) for pr in prompts.values()]
            row[f"{f}_prompt_tokens"] = f"{min(sizes)}-{max(sizes)}"
            for name, engine in engines.items():
                t = time.perf_counter()
                hits = {d: 0 for d in depths}
                key_nlls = []
                for (d, i), key in keys.items():
                    answer = engine.complete(prompts[(d, i)], max_new_tokens=args.new_tokens).text
                    ok = key in answer
                    hits[d] += ok
                    trial = {"length": n, "depth": d, "strategy": name, "filler": f, "key": key, "answer": answer,
                             "ok": ok}
                    if args.key_nll:
                        trial["key_nll"] = key_nll(engine, prompts[(d, i)], key)
                        key_nlls.append(trial["key_nll"])
                    details.append(trial)
                row[f"{name}_{f}_acc"] = sum(hits.values()) / len(keys)
                if key_nlls:
                    row[f"{name}_{f}_key_nll"] = sum(key_nlls) / len(key_nlls)
                row[f"{name}_{f}_by_depth"] = {f"{round(d * 100)}%": h / args.trials for d, h in hits.items()}
                row[f"{name}_{f}_s"] = time.perf_counter() - t
        rows.append(row)
        write_json(out, "needle.json", {"info": info, "rows": rows, "trials": details})  # kept if a later length dies
        print(f"  {n}: " + ", ".join(f"{s}/{f} {row[f'{s}_{f}_acc']:.2f} ({row[f'{s}_{f}_s']:.0f} s)"
                                     for s, f in combos), flush=True)
    print()
    print_table(rows, ["length"] + [f"{s}_{f}_acc" for s, f in combos])
    if args.key_nll:
        print("\nmean NLL per key token (teacher-forced; lower is better)")
        print_table(rows, ["length"] + [f"{s}_{f}_key_nll" for s, f in combos])
    cols = [f"{round(d * 100)}%" for d in depths]
    print("\nby depth")
    print_table([{"length": r["length"], "variant": f"{s}/{f}", **r[f"{s}_{f}_by_depth"], "all": r[f"{s}_{f}_acc"]}
                 for s, f in combos for r in rows], ["length", "variant", *cols, "all"])
    plot(out, "needle.png", {f"{s}/{f}": [(r["length"], r[f"{s}_{f}_acc"]) for r in rows] for s, f in combos},
         "prompt tokens", "pass-key accuracy", f"{args.model} passkey retrieval ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
