"""Decode speed of the engine's own loop against transformers' ``generate`` on the same loaded model (issue 15's
CPU goal: the embedded model decodes at least as fast through longctx-llm as through ``generate``).

Both decode greedily from the same prompt ids on the same model object, so they produce the same tokens (tested in
``tests/integration/test_smollm.py``); each is run ``--repeats`` times after a warm-up, and the median is kept.
Decode tokens/s excludes the prefill (timed separately with one new token). Prints a table and the ratio.

    python benchmarks/cpu_decode.py --new-tokens 128 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir, print_table, write_json  # noqa: E402

from longctx_llm import Engine, ModelHandle  # noqa: E402

PROMPT = ("Here is a long, detailed story about a dragon who lived in the mountains above a small village, "
          "told from the beginning:\n\nOnce upon a time")


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--device", default="cpu")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    loaded = ModelHandle(args.model, device=args.device).get()
    engine = Engine(loaded)
    ids = engine.tokenize(PROMPT)
    x = torch.tensor([ids], device=loaded.device)
    n = args.new_tokens

    def ours(k: int):
        return engine.complete_ids(ids, max_new_tokens=k, temperature=0.0)

    def theirs(k: int):
        with torch.inference_mode():
            return loaded.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=k, do_sample=False,
                                         pad_token_id=loaded.tokenizer.eos_token_id)

    got = ours(n).token_ids
    want = theirs(n)[0, len(ids):].tolist()
    tokens = len(got)
    paths = (("longctx-llm engine", ours), ("transformers generate", theirs))
    for _, fn in paths:
        fn(n)  # warm-up
    totals = {name: [] for name, _ in paths}
    prefills = {name: [] for name, _ in paths}
    for _ in range(args.repeats):  # interleaved, so a drift of the machine's speed hits both paths alike
        for name, fn in paths:
            totals[name].append(timed(lambda: fn(n)))
            prefills[name].append(timed(lambda: fn(1)))
    rows = []
    for name, _ in paths:
        total, prefill = statistics.median(totals[name]), statistics.median(prefills[name])
        rows.append({"path": name, "new_tokens": tokens, "prefill_s": round(prefill, 4), "total_s": round(total, 3),
                     "decode_tokens_per_s": round((tokens - 1) / max(total - prefill, 1e-9), 2)})
    ratio = rows[0]["decode_tokens_per_s"] / rows[1]["decode_tokens_per_s"]
    rows.append({"path": "ratio engine / generate", "decode_tokens_per_s": round(ratio, 3),
                 "total_s": round(rows[0]["total_s"] / rows[1]["total_s"], 3)})
    print(f"{loaded.source} on {loaded.device}, {torch.get_num_threads()} threads, {loaded.dtype}; "
          f"same tokens: {got == want[: len(got)]}")
    print_table(rows, ["path", "new_tokens", "prefill_s", "total_s", "decode_tokens_per_s"])
    write_json(out_dir(args.out), "cpu_decode.json", {"rows": rows, "same_tokens": got == want[: len(got)]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
