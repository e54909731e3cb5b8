"""StreamingLLM with DCA inside vs StreamingLLM alone: perplexity over a long stream, side by side.

Alone, the window must fit the model's trained length (SmolLM2: sink 4 + window 8188 at most); with DCA inside
(``strategy: [{name: streaming, layout: shift, window: W}, {name: dca}]``) it may be several times longer.

    python benchmarks/streaming_dca.py --model /root/smol.gguf --text .data/pydocs-3.11.jsonl.gz --tokens 262144
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from _common import header, out_dir, plot, print_table, write_json

from longctx_llm import Engine, ModelHandle
from longctx_llm.eval import read_text, segment_perplexity

VARIANTS = {
    "ring 4092": {"name": "streaming", "sink_tokens": 4, "window": 4092},
    "ring 8188": {"name": "streaming", "sink_tokens": 4, "window": 8188},
    "shift 16380 + dca": [{"name": "streaming", "layout": "shift", "sink_tokens": 4, "window": 16380}, {"name": "dca"}],
    "shift 32764 + dca": [{"name": "streaming", "layout": "shift", "sink_tokens": 4, "window": 32764}, {"name": "dca"}],
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--text", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens", type=int, default=262144)
    p.add_argument("--every", type=int, default=16384)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    lm = ModelHandle(args.model, device=args.device).get()
    ids = lm.tokenizer(read_text(args.text), add_special_tokens=False)["input_ids"][: args.tokens]
    rows, curves = [], {}
    for name in args.variants.split(","):
        engine = Engine(lm, strategy=VARIANTS[name])
        t = time.perf_counter()
        nll = engine.score(ids, chunk_size=4096)
        sec = time.perf_counter() - t
        segs = segment_perplexity(nll, args.every)
        curves[name] = [(s["tokens_seen"], s["ppl"]) for s in segs]
        rows.append({"variant": name, "tokens": len(ids), "ppl": math.exp(nll.mean().item()),
                     "tokens_per_s": len(ids) / sec, "attention_span": engine.attention_span})
        print(f"  {rows[-1]}", flush=True)
    base = rows[0]["ppl"]
    for r in rows:
        r["ppl_vs_first"] = r["ppl"] / base
    print()
    print_table(rows, ["variant", "attention_span", "tokens", "ppl", "ppl_vs_first", "tokens_per_s"])
    out = out_dir(args.out)
    write_json(out, "streaming_dca.json", {"info": header(str(lm.device), model=args.model), "rows": rows,
                                           "segments": curves})
    plot(out, "streaming_dca.png", curves, "tokens streamed", "segment perplexity", "StreamingLLM alone vs with DCA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
