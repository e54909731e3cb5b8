"""StreamingLLM perplexity over a long stream: 4 sinks vs 0 sinks at windows 1k-4k, and the drift check (issue 4).

1. Streams ``--tokens`` tokens of ``--text`` through ``Engine.score`` under ``streaming`` with each window and each
   sink count; reports overall perplexity, per-segment perplexity (every ``--every`` tokens, plotted) and the ratio
   no-sinks / sinks (paper §4.1: without sinks perplexity blows up once the first tokens are evicted).
2. Drift: a passage of ``--passage`` tokens streamed twice in a row; the second pass's per-segment perplexity over
   the first pass's. Segments starting less than two windows into a pass are listed but not judged: their cache
   holds different text in the two passes (nothing, then the passage's end). Target: every judged ratio within 5%.

A text shorter than ``--tokens`` is cycled (noted in the JSON): with a window far shorter than the text, the model
cannot see the repeat.

    python benchmarks/streaming_ppl.py --text long.jsonl.gz --out bench-out                 # GPU, 1M tokens
    python benchmarks/streaming_ppl.py --device cpu --tokens 4096 --every 1024 --windows 256 --passage 1024
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

from _common import header, out_dir, plot, print_table, write_json

from longctx_llm import Engine, ModelHandle
from longctx_llm.eval import read_text, segment_perplexity

DEFAULT_TEXT = Path(__file__).resolve().parents[1] / "tests" / "data" / "pydocs_tutorial.txt"
logger = logging.getLogger("streaming_ppl")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", default=str(DEFAULT_TEXT), help=".txt, or .jsonl[.gz] with a 'text' field")
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF model directory or .gguf path")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--tokens", type=int, default=1 << 20, help="tokens streamed per variant")
    p.add_argument("--every", type=int, default=16384, help="segment length for per-segment perplexity")
    p.add_argument("--windows", default="1020,2044,4092", help="window sizes (sink + window = 1k, 2k, 4k)")
    p.add_argument("--sinks", default="4,0")
    p.add_argument("--piece", type=int, default=512, help="tokens per forward while streaming")
    p.add_argument("--passage", type=int, default=32768, help="drift check: passage length, streamed twice")
    p.add_argument("--drift-every", type=int, default=2048)
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
    text_ids = loaded.tokenizer(read_text(args.text), add_special_tokens=False)["input_ids"]
    cycles = math.ceil(args.tokens / len(text_ids))
    if cycles > 1:
        logger.warning("the text has %d tokens; cycling it %d times to stream %d", len(text_ids), cycles, args.tokens)
    ids = (text_ids * cycles)[: args.tokens]
    windows = [int(x) for x in args.windows.split(",")]
    sinks = [int(x) for x in args.sinks.split(",")]

    rows, curves = [], {}
    for w in windows:
        for s in sinks:
            engine = Engine(loaded, strategy={"name": "streaming", "sink_tokens": s, "window": w,
                                              "prefill_chunk_size": min(args.piece, w)})
            t0 = time.perf_counter()
            nll = engine.score(ids, chunk_size=4096)
            dt = time.perf_counter() - t0
            segs = segment_perplexity(nll, args.every)
            curves[f"sink {s}, window {w}"] = [(r["tokens_seen"], r["ppl"]) for r in segs]
            rows.append({"window": w, "sinks": s, "tokens": len(ids), "ppl": math.exp(nll.mean().item()),
                         "worst_segment_ppl": max(r["ppl"] for r in segs), "tokens_per_s": len(ids) / dt,
                         "segments": segs})
            logger.info("window %d sinks %d: ppl %.3f (%.0f tok/s)", w, s, rows[-1]["ppl"], rows[-1]["tokens_per_s"])
    for r in rows:
        with_sinks = next((x for x in rows if x["window"] == r["window"] and x["sinks"] == max(sinks)), r)
        r["ppl_over_max_sinks"] = r["ppl"] / with_sinks["ppl"]
    print_table(rows, ["window", "sinks", "tokens", "ppl", "worst_segment_ppl", "ppl_over_max_sinks", "tokens_per_s"])

    # ---- drift: one passage streamed twice --------------------------------------------------------------------
    passage = text_ids[: args.passage]
    drift = []
    for w in windows:
        engine = Engine(loaded, strategy={"name": "streaming", "sink_tokens": max(sinks), "window": w,
                                          "prefill_chunk_size": min(args.piece, w)})
        nll = engine.score(passage + passage, chunk_size=4096)
        n = len(passage)
        first = segment_perplexity(nll[: n - 1], args.drift_every)
        second = segment_perplexity(nll[n - 1 : 2 * n - 1], args.drift_every)
        judged = []
        for a, b in zip(first, second):
            start = a["tokens_seen"] - args.drift_every
            ratio = b["ppl"] / a["ppl"]
            if start >= 2 * w:
                judged.append(abs(ratio - 1))
            drift.append({"window": w, "segment_end": a["tokens_seen"], "first_pass": a["ppl"],
                          "second_pass": b["ppl"], "ratio": ratio, "judged": start >= 2 * w})
        worst = max(judged) if judged else float("nan")
        logger.info("drift window %d: worst judged |ratio - 1| = %.4f (%s)", w, worst,
                    "within 5%" if worst <= 0.05 else "OVER 5%")
    print_table(drift, ["window", "segment_end", "first_pass", "second_pass", "ratio", "judged"])
    summary = {
        w: max([abs(d["ratio"] - 1) for d in drift if d["window"] == w and d["judged"]], default=None) for w in windows
    }

    out = out_dir(args.out)
    write_json(out, "streaming_ppl.json", {
        **header(args.device, model=args.model, text=args.text, text_tokens=len(text_ids), text_cycles=cycles,
                 piece=args.piece, every=args.every),
        "rows": rows, "drift": drift, "drift_worst_by_window": summary,
        "drift_within_5pct": all(v is not None and v <= 0.05 for v in summary.values()),
    })
    plot(out, "streaming_ppl.png", curves, "tokens streamed", "segment perplexity",
         f"StreamingLLM on {args.model}: sinks vs none", logx=True, logy=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
