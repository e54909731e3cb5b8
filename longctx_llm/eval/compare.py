"""``longctx eval compare``: the same measurements for several pipelines in one run (the strategy chooser).

Each pipeline runs each suite (``ppl``, ``gap``, ``recall``, ``passkey``, ``speed``) with the same text, lengths and
samples; one table per suite puts the pipelines side by side, and ``--out`` receives ``results.json``,
``results.csv`` and PNG plots (perplexity, passkey accuracy, peak memory and decode speed against length, the gap
closed against context length) when matplotlib is installed (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..errors import InputError, LongctxError
from ..runtime import tensor_parallel
from . import evaluate, report
from .options import KEY_NLL_HELP, SAME_TOKENS_HELP, parse_ints, parse_lengths
from .textdata import split_text

logger = logging.getLogger(__name__)

SUITES = ("ppl", "gap", "recall", "passkey", "speed")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pipelines", required=True, help="comma-separated pipeline files, e.g. full.yaml,dca.yaml")
    p.add_argument("--suite", default="ppl,speed", help=f"comma-separated suites among {', '.join(SUITES)}")
    p.add_argument("--text", default=None, help="a .txt file, or .jsonl[.gz] with a 'text' field per line")
    p.add_argument("--split", choices=("all", "heldout", "train"), default="all", help="which part of --text")
    p.add_argument("--lengths", default="4096,8192", help="lengths for ppl, passkey and speed")
    p.add_argument("--same-tokens", action="store_true", help=f"ppl: {SAME_TOKENS_HELP}")
    p.add_argument("--context", default="1024", help="context lengths for gap and recall")
    p.add_argument("--target", type=int, default=128, help="gap: target tokens")
    p.add_argument("--span", type=int, default=64, help="recall: tokens to reproduce")
    p.add_argument("--cue", type=int, default=8, help="recall: cue tokens")
    p.add_argument("--samples", type=int, default=16, help="gap and recall: samples per context length")
    p.add_argument("--turn-tokens", type=int, default=128, help="memory pipelines: context fed as turns of K tokens")
    p.add_argument("--trials", type=int, default=2, help="passkey: keys per length and depth")
    p.add_argument("--depths", default="10,50,90", help="passkey: depths, percent")
    p.add_argument("--key-nll", action="store_true", help=f"passkey: {KEY_NLL_HELP}")
    p.add_argument("--decode-tokens", type=int, default=32, help="speed: tokens decoded after the prompt")
    p.add_argument("--out", default="compare-out", help="folder for results.json, results.csv and plots")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help='also print one JSON object {"results": [...]}')


def run(args) -> list[dict[str, Any]]:
    from ..config import load_config
    from ..runtime.engine import Engine

    paths = [p.strip() for p in args.pipelines.split(",") if p.strip()]
    if not paths:
        raise InputError("--pipelines: give at least one pipeline file")
    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise InputError(f"--suite: unknown suite(s) {bad or args.suite!r} (valid: {', '.join(SUITES)})")
    needs_text = {"ppl", "gap", "recall"} & set(suites)
    if needs_text and not args.text:
        raise InputError(f"--text: the suites {', '.join(sorted(needs_text))} need a text file")
    lengths = parse_lengths(args.lengths)
    contexts = parse_ints(args.context, "--context")
    depths = [d / 100 for d in parse_ints(args.depths, "--depths", minimum=0)]
    configs = {Path(p).stem: load_config(p) for p in paths}  # every file checked before anything runs
    text = split_text(args.text, args.split) if args.text else None
    rows: list[dict[str, Any]] = []
    for name, cfg in configs.items():
        engine = Engine.from_config(cfg)
        ids = engine.tokenize(text, add_special_tokens=False) if text else list(range(1000, 5096))
        for suite in suites:
            logger.info("compare: %s / %s", name, suite)
            settings = {k: getattr(args, k) for k in ("target", "samples", "turn_tokens", "seed", "span", "cue",
                                                      "trials", "decode_tokens", "same_tokens", "key_nll")}
            try:  # on every process of a tensor-parallel run (model.tp under torchrun)
                out = tensor_parallel.call(run_suite, engine, suite, ids, lengths, contexts, depths, settings)
            except LongctxError as e:  # this pipeline cannot run this suite at all: say why, go on
                out = [{"error": str(e)}]
            rows += [{"pipeline": name, "suite": suite, **r} for r in out]
    write(Path(args.out), rows, suites)
    return rows


def run_suite(engine, suite: str, ids: list[int], lengths: list[int], contexts: list[int], depths: list[float],
              o: dict[str, Any]) -> list[dict[str, Any]]:
    """One suite's rows for one pipeline's engine (``o``: the command's settings)."""
    if suite == "ppl":
        return evaluate.perplexity(engine, ids, [n for n in lengths if n <= len(ids)], same_tokens=o["same_tokens"])
    if suite == "gap":
        return evaluate.gap(engine, ids, contexts, o["target"], o["samples"], turn_tokens=o["turn_tokens"],
                            seed=o["seed"])
    if suite == "recall":
        return evaluate.recall(engine, ids, contexts, o["span"], o["cue"], o["samples"], turn_tokens=o["turn_tokens"],
                               seed=o["seed"])
    if suite == "passkey":
        return evaluate.passkey(engine, lengths, depths, o["trials"], seed=o["seed"], key_nll=o["key_nll"])
    return evaluate.speed(engine, ids, lengths, decode_tokens=o["decode_tokens"])


def write(out: Path, rows: list[dict[str, Any]], suites: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"results": rows}, indent=1))
    report.write_csv(out / "results.csv", rows)
    for suite in suites:
        part = [{k: v for k, v in r.items() if k != "suite"} for r in rows if r["suite"] == suite]
        print(f"\n== {suite}")
        print(report.format_table(part))
    by = lambda suite: {r["pipeline"]: [] for r in rows if r["suite"] == suite}  # noqa: E731

    def series(suite: str, x: str, y: str) -> dict:
        s = by(suite)
        for r in rows:
            if r["suite"] == suite and x in r:
                s[r["pipeline"]].append((r[x], r.get(y)))
        return s

    plots = [
        ("ppl", "length", "ppl", "perplexity", True),
        ("passkey", "length", "accuracy", "pass-key accuracy", False),
        ("speed", "length", "peak_memory_mib", "peak memory (MiB)", True),
        ("speed", "length", "decode_tokens_per_s", "decode tokens/s", False),
        ("speed", "length", "prefill_s", "prefill seconds", True),
        ("gap", "context_tokens", "gap_closed", "share of the perplexity gap closed", False),
        ("recall", "context_tokens", "acc_pipeline", "recall accuracy", False),
    ]
    written = []
    for suite, x, y, label, logy in plots:
        if suite in suites:
            name = f"{suite}_{y}.png"
            if report.plot(out / name, series(suite, x, y), x.replace("_", " "), label, label, logy=logy):
                written.append(name)
    note = ""
    if written:
        note = f" and {', '.join(written)}"
    elif not report.can_plot():
        note = "; no plots: matplotlib is not installed (pip install matplotlib)"
    print(f"\nwrote {out / 'results.json'}, {out / 'results.csv'}{note}")
