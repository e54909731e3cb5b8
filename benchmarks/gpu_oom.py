"""Out of memory on the GPU: the engine reports it and keeps serving (issue 13).

A request whose prompt cannot fit in the memory left to the process (capped with
``torch.cuda.set_per_process_memory_fraction``) must end in a ``ResourceError`` naming the prompt, and the next
request on the same engine and session must answer. Prints one row per request.

    python benchmarks/gpu_oom.py --model /root/smol.gguf --fraction 0.008 --tokens 60000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

from longctx_llm import Engine, LongctxError, ResourceError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--fraction", type=float, default=0.008, help="share of the GPU's memory this process may use")
    p.add_argument("--tokens", type=int, default=60000, help="prompt length of the request that cannot fit")
    p.add_argument("--strategy", default="dca")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_oom: needs a CUDA device", file=sys.stderr)
        return 2
    torch.cuda.set_per_process_memory_fraction(args.fraction)
    cap = torch.cuda.get_device_properties(0).total_memory * args.fraction / 2**30
    engine = Engine(args.model, strategy={"name": args.strategy}, generation={"max_new_tokens": 8, "temperature": 0})
    word = "lorem ipsum dolor sit amet consectetur "
    rows = []
    for name, prompt in (
        ("small", "What is the capital of France?"),
        ("too big", word * (args.tokens // 14)),  # 14 tokens per repetition (SmolLM2)
        ("small again", "What is the capital of France?"),
        ("session turn after the failure", "And of Italy?"),
    ):
        t0 = time.perf_counter()
        try:
            sid = "s" if name.startswith("session") or name == "too big" else None
            out = engine.chat(prompt, session_id=sid)
            result = f"answered: {out.text[:40]!r}"
        except ResourceError as e:
            result = f"ResourceError: {str(e)[:110]}"
        except LongctxError as e:
            result = f"{type(e).__name__}: {str(e)[:110]}"
        rows.append({"request": name, "seconds": round(time.perf_counter() - t0, 2), "result": result,
                     "allocated_gib": round(torch.cuda.memory_allocated() / 2**30, 3)})
    print(f"GPU memory cap: {cap:.2f} GiB ({args.fraction} of {torch.cuda.get_device_name(0)})")
    print_table(rows, ["request", "seconds", "allocated_gib", "result"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
