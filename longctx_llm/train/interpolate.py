"""Weight interpolation of two adapters of one lineage (a continued training and the adapter it started from).

A compressor trained further on a broader mix can give back a little on the text it first learned; the weights on
the line between the two (``(1 - alpha) * a + alpha * b``, every tensor, as in WiSE-FT / model soups) often keep most
of both. Both adapters must be of the same kind, base model and shapes (the second continued from the first, or both
from one start). The card of the result is the second's kind, base model and config, with an ``interpolation``
record (alpha, and each end's training run, data and weight hashes) and without held-out figures, which belong to
other weights: measure them (``longctx eval gap --split heldout``) before shipping. ``--out`` must be a new folder.

    python -m longctx_llm.train.interpolate A_DIR B_DIR --alpha 0.5 --out OUT_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..errors import AdapterError, LongctxError
from ..model.adapters import load_adapter, save_adapter

#: card entries measured on one set of weights: not carried over to an interpolation
MEASURED = ("heldout", "heldout_by_source")


def interpolate(a_dir: str | Path, b_dir: str | Path, alpha: float, out: str | Path) -> Path:
    """Write ``(1 - alpha) * a + alpha * b`` (each tensor, in float32, stored in a's dtype) to ``out``."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise AdapterError(f"alpha: {alpha!r} is not between 0 and 1 (valid: 0 = the first adapter, 1 = the second)")
    target = Path(out).expanduser().resolve()
    for src in (a_dir, b_dir):
        if Path(src).expanduser().resolve() == target:
            raise AdapterError(f"--out {str(out)!r} is one of the adapters it reads; name a new folder")
    ta, ca = load_adapter(a_dir)
    tb, cb = load_adapter(b_dir)
    if ca.get("kind") != cb.get("kind"):
        raise AdapterError(f"{str(a_dir)!r} is a {ca.get('kind')!r} adapter, {str(b_dir)!r} a {cb.get('kind')!r} one")
    base_a, base_b = ca.get("base_model", {}), cb.get("base_model", {})
    if base_a.get("sha256") != base_b.get("sha256"):
        raise AdapterError(f"the adapters were trained for different base models ({base_a.get('name')!r}, "
                           f"{base_b.get('name')!r})")
    if set(ta) != set(tb) or any(ta[k].shape != tb[k].shape for k in ta):
        diff = sorted(set(ta) ^ set(tb)) or [k for k in ta if ta[k].shape != tb[k].shape]
        raise AdapterError(f"the adapters hold different tensors or shapes (e.g. {diff[:3]}): not one lineage")
    if ca.get("config") != cb.get("config"):
        raise AdapterError("the adapters' configs differ (ranks, targets, slots): not one lineage")
    mixed = {k: ((1.0 - alpha) * ta[k].float() + alpha * tb[k].float()).to(ta[k].dtype) for k in ta}

    def end(c: dict) -> dict:  # what made one end of the line: its run, its data, its files
        return {"training": c.get("training"), "data": c.get("data"), "files": [f.get("sha256") for f in c["files"]]}

    own = ("format", "format_version", "files", "joined", "training", "data", *MEASURED)
    card = {k: v for k, v in cb.items() if k not in own}
    card["interpolation"] = {"alpha": float(alpha), "rule": "(1 - alpha) * a + alpha * b, every tensor",
                             "a": end(ca), "b": end(cb)}
    return save_adapter(out, mixed, card)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m longctx_llm.train.interpolate", description=__doc__.splitlines()[0])
    p.add_argument("a", help="the first adapter directory (alpha 0)")
    p.add_argument("b", help="the second adapter directory (alpha 1)")
    p.add_argument("--alpha", type=float, required=True, help="weight of the second adapter, 0..1")
    p.add_argument("--out", required=True, help="output adapter directory")
    args = p.parse_args(argv)
    try:
        print(interpolate(args.a, args.b, args.alpha, args.out))
    except LongctxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
