"""The held-out figures of several trained RCC compressors side by side, from their cards (`gpu.sh rcc-sweep`).

    python benchmarks/sweep_table.py benchmarks/results/rcc-sweep/*/sweep-*/adapter.json

Per run: ratio, ranks, reconstruction share, steps and tokens, the gap closed and the reconstruction accuracy, the
same with every sample reading another sample's slots (the control), and what the right slots add over it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cards", nargs="+", metavar="CARD.json", help="adapter.json of each trained compressor")
    rows = []
    for p in parser.parse_args(argv).cards:
        card = json.loads(Path(p).read_text())
        h, t, c = card["heldout"], card["training"], card["config"]
        rows.append({
            "run": f"{Path(p).parent.parent.name}/{Path(p).parent.name}", "ratio": c["ratio"],
            "ranks enc/slot/reader": f"{c['encoder_rank']}/{c['slot_rank']}/{c['reader_rank']}",
            "recon share": t["recon_share"], "steps": t["steps"], "Mtokens": round(t["tokens"] / 1e6, 1),
            "gap": h["gap_closed"], "gap swapped": h["gap_closed_swapped"],
            "gap from slots": round(h["gap_closed"] - h["gap_closed_swapped"], 4),
            "acc": h["acc_rcc"], "acc swapped": h["acc_swapped"],
            "acc from slots": round(h["acc_rcc"] - h["acc_swapped"], 4),
            "acc none/full": f"{h['acc_none']}/{h['acc_full']}",
        })
    print_table(rows, list(rows[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
