"""RCC against plain attention and DCA: prefill time, decode speed, peak memory and cache size from 8k to 1M tokens.

The embedded SmolLM2 (its shipped compressor) or a random-weight Llama-3-8B-shaped model (``--shape llama-8b``,
``--layers`` of its 32, pretraining length 128k, a random compressor: speed and memory do not depend on weights),
through the same ``longctx_llm.eval.evaluate.speed`` the ``longctx eval speed`` command uses. Lengths a strategy cannot
take are rows with the reason. Ratios to plain attention are printed per length.

    python benchmarks/rcc_speed.py --lengths 8192,32768,131072 --device cpu
    python benchmarks/rcc_speed.py --shape llama-8b --tokenizer .data/tok --lengths 8192,...,1048576 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    _option_value,
    add_model_shape_args,
    out_dir,
    print_table,
    random_compressor,
    random_llama,
    write_json,
)

from longctx_llm import Engine, ModelHandle  # noqa: E402
from longctx_llm.eval import evaluate  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=("smollm2", "llama-8b"), default="smollm2")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model of the smollm2 shape (alias or GGUF/HF path)")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory (llama-8b shape; default: SmolLM2's)")
    add_model_shape_args(p)
    p.add_argument("--lengths", default="8192,32768,131072")
    p.add_argument("--variants", default="full,dca,rcc")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--random-compressor", action="store_true",
                   help="smollm2 shape: a random compressor of the shipped shape instead of the shipped one (speed and "
                        "memory do not depend on its weights; the llama-8b shape always takes one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    lengths = [int(x) for x in args.lengths.split(",")]
    if args.shape == "smollm2":
        loaded = ModelHandle(args.model, device=args.device).get()
        rcc = {"name": "rcc", **({"compressor": random_compressor(loaded)} if args.random_compressor else {})}
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else ModelHandle("smollm2-135m-instruct", device="cpu").get().tokenizer
        dev = "cuda" if args.device == "auto" and torch.cuda.is_available() else ("cpu" if args.device == "auto" else args.device)
        loaded = random_llama(args, tok, dev, torch.bfloat16 if dev.startswith("cuda") else torch.float32,
                              max_positions=131072)
        rcc = {"name": "rcc", "compressor": random_compressor(loaded)}
    specs = {"full": {"name": "full", "max_length": max(lengths) + 64}, "dca": {"name": "dca"}, "rcc": rcc}
    ids = list(range(1000, 1000 + 4096))
    rows = []
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        base, *pairs = name.split("/")  # a variant may carry strategy options: rcc/encode_batch=2
        if base not in specs:
            raise SystemExit(f"--variants: unknown variant {base!r} (known: {', '.join(specs)})")
        spec = dict(specs[base])
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise SystemExit(f"--variants: {name!r}: expected option=value after '/', got {pair!r}")
            spec[key] = _option_value(value)
        engine = Engine(loaded, strategy=spec)
        for r in evaluate.speed(engine, ids, lengths, decode_tokens=args.decode_tokens):
            rows.append({"variant": name, **{k: v for k, v in r.items() if k != "strategy"}})
            print(rows[-1], flush=True)
    full = {r["length"]: r for r in rows if r["variant"] == "full" and "error" not in r}
    for r in rows:
        b = full.get(r["length"])
        if b and "error" not in r:
            r["prefill_vs_full"] = round(r["prefill_s"] / b["prefill_s"], 3)
            r["peak_vs_full"] = round(r["peak_memory_mib"] / b["peak_memory_mib"], 3)
            r["cache_vs_full"] = round(r["cache_mib"] / b["cache_mib"], 4) if b["cache_mib"] else None
    cols = ["variant", "length", "prefill_s", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_mib",
            "cache_mib", "prefill_vs_full", "peak_vs_full", "cache_vs_full", "error"]
    print()
    print_table(rows, cols)
    device = torch.cuda.get_device_name() if loaded.device.type == "cuda" else "cpu"
    write_json(out_dir(args.out), f"rcc_speed_{args.shape}.json",
               {"rows": rows, "device": device, "date": time.strftime("%Y-%m-%d"), "args": vars(args)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
