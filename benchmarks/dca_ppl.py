"""Perplexity on long natural text, DCA beside plain attention, at 4k..128k tokens of context (DCA §4.2 / issue 3).

Every length scores the SAME tokens: one stretch of M tokens of ``--text`` (``--stretch``, default the largest
length; from token ``--offset``) is cut into M/N consecutive, non-overlapping windows of N tokens, and each window
is scored from scratch with ``Engine.score`` (a token's context is the tokens before it in its window). So between
lengths only the context the model gets changes, not the text. Perplexity is over all tokens of the stretch except
those that start a window at some length (they have no context there): the same token set at every length.

Reported per length and variant:

- ``ppl`` over the stretch and ``ratio_to_first``: that value over the variant's own value at the first length
  (issue 3's target for DCA: within 1.15 at every length);
- ``tail_ppl``: the last ``--tail`` tokens of the stretch, which end the last window at every length, so they are
  read with about N tokens of context (the old "fixed final tail" column);
- by position inside the window (buckets ``[0, first length)``, then between successive lengths, or ``--buckets``):
  the perplexity of the tokens there, and its ratio to the same tokens scored at the first length (below 1: the
  longer context helps them; above 1: it hurts).

Variants (``--variants``): ``full`` (plain attention given a window as long as N, so it is measured past its
pretraining length, where it blows up), ``dca``, ``dca_temp`` (DCA with ``temperature_scaling``).

    python benchmarks/dca_ppl.py --text data.jsonl.gz --variants full,dca,dca_temp --out bench-out
    python benchmarks/dca_ppl.py --lengths 512,1024,2048 --dca-pretraining-length 512 --variants full,dca,dca_temp \\
        --device cpu        # dry run on the tutorial fixture, DCA chunking as if L were 512
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from _common import add_variant_args, header, out_dir, plot, print_table, variant_specs, write_json

from longctx_llm import Engine, ModelHandle
from longctx_llm.eval import read_text

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pydocs_tutorial.txt"


def short(n: int) -> str:
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def ppl(nll: torch.Tensor, mask: torch.Tensor) -> float | None:
    return math.exp(nll[mask].double().mean().item()) if bool(mask.any()) else None


def score_windows(engine: Engine, stretch: torch.Tensor, n: int, chunk: int) -> torch.Tensor:
    """(M,) NLL of every token of ``stretch`` read in windows of ``n`` tokens; NaN where a window starts."""
    nll = torch.full((stretch.numel(),), float("nan"))
    for start in range(0, stretch.numel(), n):
        nll[start + 1 : start + n] = engine.score(stretch[start : start + n], chunk_size=chunk)
    return nll


def check_divides(lengths: list[int], m: int) -> None:
    bad = [n for n in lengths if m % n]
    if bad:
        raise SystemExit(f"--lengths: {bad} do not divide the stretch of {m} tokens (each length must divide it)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(DEFAULT_TEXT), help=".txt, or .jsonl[.gz] with a 'text' field")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF model directory or .gguf path")
    p.add_argument("--lengths", default="4096,8192,16384,32768,65536,131072",
                   help="window lengths N; each must divide the stretch")
    p.add_argument("--stretch", type=int, default=None, help="tokens scored at every length (default: the largest)")
    p.add_argument("--offset", type=int, default=0, help="token of the text where the stretch starts")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    add_variant_args(p, default="full,dca")
    p.add_argument("--score-chunk", type=int, default=4096, help="tokens per scoring piece (bounds memory)")
    p.add_argument("--tail", type=int, default=1024, help="also report the ppl of the stretch's last N tokens (0: off)")
    p.add_argument("--buckets", default=None,
                   help="upper edges of the position-in-window buckets (default: the lengths)")
    p.add_argument("--save-nll", action="store_true", help="also write every per-token NLL (dca_ppl_nll.pt)")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    lengths = sorted(int(x) for x in args.lengths.split(","))
    if lengths[0] < 2:
        raise SystemExit("--lengths: each length must be at least 2 tokens")
    check_divides(lengths, args.stretch or lengths[-1])
    specs = variant_specs(args, lengths[-1])
    handle = ModelHandle(args.model, device=args.device, dtype=args.dtype)
    loaded = handle.get()
    ids = loaded.tokenizer(read_text(args.text))["input_ids"]
    available = len(ids) - args.offset
    if args.stretch is None and available < lengths[-1]:
        print(f"note: the text has {available} tokens from offset {args.offset}; lengths above it are skipped",
              file=sys.stderr)
        lengths = [n for n in lengths if n <= available]
        if not lengths:
            raise SystemExit("no length fits the text")
    m = args.stretch or lengths[-1]
    if m > available:
        raise SystemExit(f"--stretch {m}: the text has only {available} tokens from offset {args.offset}")
    check_divides(lengths, m)
    stretch = torch.tensor(ids[args.offset : args.offset + m], dtype=torch.long)

    pos = torch.arange(m)
    common = torch.ones(m, dtype=torch.bool)  # the same token set at every length: no window start anywhere
    for n in lengths:
        common &= pos % n != 0
    tail = common & (pos >= m - args.tail) if args.tail else None
    edges = sorted(int(x) for x in args.buckets.split(",")) if args.buckets else list(lengths)
    if edges[-1] < lengths[-1]:
        edges.append(lengths[-1])
    buckets = list(zip([0, *edges[:-1]], edges))
    labels = [f"[{short(lo)},{short(hi)})" for lo, hi in buckets]

    print(f"stretch: {m} tokens from token {args.offset} of {Path(args.text).name} ({len(ids)} tokens), "
          f"{int(common.sum())} scored at every length", flush=True)
    nlls: dict[str, dict[int, torch.Tensor]] = {name: {} for name in specs}
    rows = [{"length": n, "windows": m // n} for n in lengths]
    for name, spec in specs.items():
        engine = Engine(loaded, strategy=spec)
        for row in rows:
            n = row["length"]
            t = time.perf_counter()
            nll = nlls[name][n] = score_windows(engine, stretch, n, args.score_chunk)
            row[f"{name}_s"] = time.perf_counter() - t
            row[f"{name}_ppl"] = ppl(nll, common)
            if tail is not None:
                row[f"{name}_tail_ppl"] = ppl(nll, tail)
            in_window = pos % n
            first = nlls[name][lengths[0]]
            by_bucket, vs_first = {}, {}
            for label, (lo, hi) in zip(labels, buckets):
                mask = common & (in_window >= lo) & (in_window < hi)
                if lo < n and bool(mask.any()):
                    by_bucket[label] = ppl(nll, mask)
                    vs_first[label] = by_bucket[label] / ppl(first, mask)
            row[f"{name}_buckets"] = by_bucket
            row[f"{name}_bucket_vs_first"] = vs_first
            print(f"  {name} {n}: ppl {row[f'{name}_ppl']:.3f}"
                  + (f", tail {row[f'{name}_tail_ppl']:.3f}" if tail is not None else "")
                  + f", {row[f'{name}_s']:.1f} s ({m // n} windows)", flush=True)
    for name in specs:
        for r in rows:
            r[f"{name}_ratio_to_first"] = r[f"{name}_ppl"] / rows[0][f"{name}_ppl"]

    cols = ["length", "windows"] + [f"{v}_{c}" for v in specs for c in ("ppl", "ratio_to_first", "tail_ppl", "s")
                                    if c != "tail_ppl" or tail is not None]
    print()
    print_table(rows, cols)
    for name in specs:
        for key, what in (("buckets", "ppl"), ("bucket_vs_first", "ppl / same tokens at the first length")):
            print(f"\n{name}: {what}, by position inside the window")
            print_table([{"length": r["length"], **r[f"{name}_{key}"]} for r in rows], ["length", *labels])

    out = out_dir(args.out)
    info = header(str(loaded.device), model=args.model, text=str(args.text), text_tokens=len(ids),
                  stretch_offset=args.offset, stretch_tokens=m, scored_tokens=int(common.sum()),
                  tail_tokens=int(tail.sum()) if tail is not None else 0,
                  pretraining_length=loaded.info.pretraining_length, variants=specs, buckets=buckets)
    write_json(out, "dca_ppl.json", {"info": info, "rows": rows})
    if args.save_nll:
        torch.save({"lengths": lengths, "offset": args.offset,
                    "nll": {v: torch.stack([nlls[v][n] for n in lengths]) for v in specs}}, out / "dca_ppl_nll.pt")
    title = f"{args.model} on the same {short(m)} tokens of {Path(args.text).name}"
    plot(out, "dca_ppl.png", {v: [(r["length"], r[f"{v}_ppl"]) for r in rows] for v in specs},
         "window (tokens of context)", "perplexity", title, logy=True)
    last = rows[-1]
    plot(out, "dca_ppl_buckets.png",
         {v: [(hi, last[f"{v}_buckets"].get(label)) for label, (_, hi) in zip(labels, buckets)] for v in specs},
         "position inside the window (bucket upper edge)", "perplexity",
         f"by position, windows of {short(last['length'])} tokens", logy=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
