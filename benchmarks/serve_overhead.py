"""What the OpenAI-compatible server costs: time to first token and tokens/s of one greedy reply, streamed
through HTTP (the ``openai`` client against ``longctx serve``'s app on 127.0.0.1) vs ``engine.stream_chat`` in
process, on the same engine in one run.

    python benchmarks/serve_overhead.py                          # embedded smollm2-135m-instruct, 64 tokens
    python benchmarks/serve_overhead.py --model PATH --tokens 128 --runs 5 --device cuda

Needs the server package (``pip install -e integrations/longctx-serve``) and ``openai``. Each path is warmed up
once, then the median of ``--runs`` runs is printed; ``tok/s`` is completion tokens over the whole request time,
``decode tok/s`` the tokens after the first over the time after the first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, reply_timing  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def in_process(engine, messages, tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    stream = engine.stream_chat(messages, max_new_tokens=tokens, temperature=0.0)
    for _ in stream:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return reply_timing(t0, first, end, stream.completion.completion_tokens)


def over_http(client, model: str, messages, tokens: int) -> dict:
    t0 = time.perf_counter()
    first = None
    n = 0
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=tokens, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content and first is None:
            first = time.perf_counter()
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
    end = time.perf_counter()
    return reply_timing(t0, first, end, n)


def median(rows: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, HF directory or .gguf path")
    p.add_argument("--tokens", type=int, default=64, help="max tokens of the greedy reply")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--prompt", default=PROMPT)
    args = p.parse_args(argv)

    from openai import OpenAI

    from longctx_llm import Engine
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    engine = Engine(args.model, strategy="full", device=args.device, dtype=args.dtype)
    _ = engine.loaded
    messages = [{"role": "user", "content": args.prompt}]
    name = "bench"
    with LiveServer(create_app(engine, model_name=name)) as live:
        client = OpenAI(base_url=live.base_url, api_key="-", max_retries=0)
        in_process(engine, messages, args.tokens)  # warm-up (allocator, kernels)
        over_http(client, name, messages, args.tokens)
        local, http = [], []
        for _ in range(args.runs):  # interleaved, so drift (thermal, other load) hits both alike
            local.append(in_process(engine, messages, args.tokens))
            http.append(over_http(client, name, messages, args.tokens))
    a, b = median(local), median(http)
    rows = [
        {"path": "in-process stream_chat", **a},
        {"path": "HTTP (openai client, SSE)", **b},
        {"path": "ratio HTTP / in-process", **{k: b[k] / a[k] if a[k] else float("nan") for k in a}},
    ]
    loaded = engine.loaded
    print(f"model {engine.model_name} on {loaded.device} ({loaded.dtype}); greedy, max {args.tokens} tokens; "
          f"median of {args.runs} runs")
    print_table(rows, ["path", "ttft_ms", "total_s", "tokens", "tok_s", "decode_tok_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
