"""One compressor on several kinds of text, against keeping the same number of raw tokens: the table of issue 23.

Runs ``longctx eval gap`` (with ``--recent-multiples 1,4``) for one pipeline on each text and prints one markdown
row per text: perplexity of the target with no context, the last k and 4k raw tokens of the context (k = the
positions the pipeline kept), the pipeline, the full context; the gap closed (perplexity and nats), and whether
the pipeline beats the last k and the last 4k raw tokens.

    python benchmarks/outside_text.py --kind readmes --out /tmp/readmes.jsonl.gz
    python benchmarks/outside_text.py --kind licences --out /tmp/licences.jsonl.gz
    python benchmarks/compressor_table.py --pipeline benchmarks/pipelines/rcc.yaml --context 1024 --samples 32 \
        --texts pydocs=../shared/data/pydocs-3.11.jsonl.gz:heldout,general-en=../shared/data/general-en.jsonl.gz:heldout,\
readmes=/tmp/readmes.jsonl.gz,licences=/tmp/licences.jsonl.gz --out bench-out/rcc-table

``--from DIR`` prints the table of an earlier run's JSON files (one ``NAME.json`` per text) without running it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def parse_texts(spec: str) -> list[tuple[str, str, str]]:
    out = []
    for item in [s for s in spec.split(",") if s.strip()]:
        name, _, rest = item.partition("=")
        path, _, split = rest.partition(":")
        if not name or not path:
            raise SystemExit(f"--texts: expected NAME=FILE[:split], got {item!r}")
        out.append((name, path, split or "all"))
    return out


def run_one(args, name: str, path: str, split: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "longctx_llm.cli", "eval", "gap", args.pipeline, "--text", path, "--split", split,
           "--context", str(args.context), "--samples", str(args.samples), "--turn-tokens", str(args.turn_tokens),
           "--recent-multiples", "1,4", "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"{name}: {res.stderr.strip()[-500:]}")
    (out / f"{name}.json").write_text(res.stdout)
    return json.loads(res.stdout)["results"][0]


def beats(pipeline: float, recent) -> str:
    """yes / no, or - where the run did not measure that many raw tokens (JSON of an older run)."""
    return "-" if not recent else ("yes" if pipeline < recent else "no")


def table(rows: list[tuple[str, dict]]) -> str:
    head = ("| text | none | last k | last 4k | pipeline | full | gap_closed | gap_closed_nats | beats last k | "
            "beats last 4k |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    lines = [head]
    for name, r in rows:
        k = r.get("recent_tokens")
        rk, r4 = r.get("ppl_recent"), r.get("ppl_recent_x4")
        p = r["ppl_pipeline"]
        lines.append(
            f"| {name} | {r['ppl_none']:.2f} | {f'{rk:.2f} (k={k:g})' if rk else '-'} | "
            f"{f'{r4:.2f}' if r4 else '-'} | **{p:.2f}** | {r['ppl_full']:.2f} | {r['gap_closed']:.3f} | "
            f"{r['gap_closed_nats']:.3f} | {beats(p, rk)} | {beats(p, r4)} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipeline")
    p.add_argument("--texts", help="NAME=FILE[:split],... (split: all, heldout, train)")
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--turn-tokens", type=int, default=128)
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--out", default="bench-out/compressor-table")
    p.add_argument("--from", dest="source", default=None, help="print the table of the JSON files in this folder")
    args = p.parse_args(argv)
    if args.source:
        rows = [(f.stem, json.loads(f.read_text())["results"][0]) for f in sorted(Path(args.source).glob("*.json"))]
        rows = [(name, r) for name, r in rows if "ppl_pipeline" in r]  # gap rows (a folder may hold recall rows too)
    else:
        if not args.pipeline or not args.texts:
            p.error("--pipeline and --texts are needed (or --from DIR)")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        rows = [(name, run_one(args, name, path, split, out)) for name, path, split in parse_texts(args.texts)]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
