"""Complete a newly trained adapter's card before it ships (issue 23): its rounds and its CPU figures.

A trainer writes the card of its own run. What it cannot know is added here, from files, not typed in:

- ``training.rounds``: the rounds of the adapter it continued (``--previous``, the shipped folder's card) plus this
  run's (its ``--data``, device, ``--time-budget`` and steps at the end, read from its own card);
- ``heldout_vs_recent``: the CPU figures of ``longctx eval gap --recent-multiples 1,4`` on the held-out rows
  (``--figures DIR`` holding ``1-pydocs-heldout.json`` and ``2-general-en-heldout.json``, as
  ``benchmarks/results/issue23/*-round*/``), beside the last k and 4k raw tokens.

    python benchmarks/card_figures.py NEW_FOLDER --kind rcc --previous plugins/longctx-rcc/src/longctx_rcc/compressors/smollm2-135m-instruct \
        --figures benchmarks/results/issue23/rcc-round4 --date 2026-12-07
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROWS = {"pydocs-3.11": "1-pydocs-heldout.json", "general-en": "2-general-en-heldout.json"}
SETUP = {
    "rcc": {"context": 1024, "extra": "", "pipeline": None},
    "ccm": {"context": 512, "extra": " --turn-tokens 128",
            "pipeline": "memory: {name: ccm, mode: concat, comp_tokens: 2} (4 turns of 128 tokens)"},
}
#: ``--default``: the shipped defaults since 2026-12-07, slots plus a raw tail of 32 tokens (``heldout_vs_recent_default``)
DEFAULT_SETUP = {
    "rcc": {"context": 1056, "extra": "",
            "pipeline": "strategy: {name: rcc} (raw_tail 32, the default: 1024 tokens -> 32 slots, then 32 raw tokens)"},
    "ccm": {"context": 512, "extra": " --turn-tokens 128",
            "pipeline": "memory: {name: ccm, mode: concat, comp_tokens: 2} (raw_tail 32, the default; 4 turns of 128 "
                        "tokens)"},
}


def option(command: str, name: str):
    """Every value of ``name`` in a trainer's recorded command line (comma-joined), or None."""
    words = command.split()  # training.command_line joins the words with spaces
    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == name]
    return ",".join(values) if values else None


def this_round(card: dict) -> dict:
    t = card["training"]
    budget = option(t["command"], "--time-budget")
    row = {"data": option(t["command"], "--data"), "device": t["device"],
           "time_budget_s": None if budget is None else round(float(budget)), "steps_at_end": t["steps"]}
    if t.get("distill"):
        row["distill"] = t["distill"]
        if t.get("distill_kinds"):
            row["distill_kinds"] = t["distill_kinds"]
    return row


def recent_figures(kind: str, folder: Path, samples_seen: set) -> dict:
    by_source = {}
    for label, name in ROWS.items():
        r = json.loads((folder / name).read_text())["results"][0]
        samples_seen.add(r["samples"])
        k = int(r["recent_tokens"])
        by_source[label] = {
            "ppl_none": r["ppl_none"], f"ppl_{kind}": r["ppl_pipeline"], "ppl_full": r["ppl_full"],
            "gap_closed": r["gap_closed"], "gap_closed_nats": r["gap_closed_nats"],
            f"ppl_recent_{k}": r["ppl_recent"], f"ppl_recent_{4 * k}": r["ppl_recent_x4"],
        }
    return by_source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("card", help="the new adapter's folder (its adapter.json is rewritten)")
    p.add_argument("--kind", choices=sorted(SETUP), required=True)
    p.add_argument("--previous", required=True, help="the folder of the adapter this run continued")
    p.add_argument("--figures", required=True, help="folder of the held-out rows' `longctx eval gap --json` files")
    p.add_argument("--date", required=True)
    p.add_argument("--device", default="CPU (2 cores)")
    p.add_argument("--default", action="store_true",
                   help="the figures are of the shipped defaults (raw tail 32): written as heldout_vs_recent_default")
    args = p.parse_args(argv)

    path = Path(args.card) / "adapter.json"
    card = json.loads(path.read_text())
    previous = json.loads((Path(args.previous) / "adapter.json").read_text())
    rounds = list(previous["training"].get("rounds") or [])
    if not rounds:
        raise SystemExit(f"{args.previous}: its card has no training.rounds to continue")
    steps = card["training"]["steps"]
    if steps < rounds[-1]["steps_at_end"]:
        raise SystemExit(f"{args.card} ends at step {steps}, before {args.previous} ({rounds[-1]['steps_at_end']}): "
                         "not a continuation of it")
    if steps > rounds[-1]["steps_at_end"]:
        rounds.append(this_round(card))
    card["training"]["rounds"] = rounds
    card["training"]["note"] = previous["training"].get("note") or (
        "steps, tokens and wall_time_s count every round (the resumed runs carry them on); device, command and data "
        "are the last round's")
    setup = (DEFAULT_SETUP if args.default else SETUP)[args.kind]
    samples: set = set()
    by_source = recent_figures(args.kind, Path(args.figures), samples)
    ks = {int(key.rsplit("_", 1)[1]) for row in by_source.values() for key in row if key.startswith("ppl_recent_")}
    if len(samples) != 1 or len(ks) != 2:
        raise SystemExit(f"{args.figures}: the rows differ in samples {sorted(samples)} or kept positions {sorted(ks)}")
    k, n = min(ks), samples.pop()
    figures = {
        "device": args.device, "samples": n, "context_tokens": setup["context"], "date": args.date,
        "command": f"longctx eval gap PIPELINE --text FILE --split heldout --context {setup['context']}{setup['extra']} "
                   f"--samples {n} --recent-multiples 1,4",
        "note": f"ppl_recent_k: the target after only the last k raw tokens of the context ({k} = the positions kept)",
    }
    if setup["pipeline"]:
        figures["pipeline"] = setup["pipeline"]
    key = "heldout_vs_recent"
    if args.default:
        key += "_default"
        figures["note"] = "the shipped defaults: slots plus the raw tail of 32 tokens; " + figures["note"]
    card[key] = {**figures, "by_source": by_source}
    path.write_text(json.dumps(card, indent=1) + "\n")
    print(json.dumps({"rounds": rounds, key: card[key]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
