"""Throughput of ``longctx serve`` under concurrent sessions: N clients at once, each its own session, one engine.

    python benchmarks/serve_throughput.py --model /root/smol.gguf --device cuda --clients 1,4,16,64 --tokens 128
    python benchmarks/serve_throughput.py --clients 1,8 --tokens 32 --serial          # CPU: the issue-24 goal

Every client sends one streamed chat completion (greedy, ``--tokens`` tokens, its own ``user`` = session id and its
own prompt) through the ``openai`` client to one server on 127.0.0.1. A row reports the wall time until all have
finished, the completion tokens per second over all clients, each request's latency (p50, p99) and time to its first
token (p50, p99), and the throughput against one client; ``--serial`` also sends the same N requests one after
another (``serial_tok_s``, ``vs_serial``). ``--max-batch 1,16`` runs the whole table once per engine setting
(1: every request on its own, the server before continuous batching; 16: the default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

TOPICS = ["a lighthouse", "a desert caravan", "a city library", "a mountain village", "a ship's cook", "a clockmaker",
          "a river ferry", "an orchard", "a night train", "a radio station", "a bakery", "a glacier camp",
          "a chess club", "a lost kite", "a market stall", "a snowed-in inn"]


def one(client, model: str, i: int, tokens: int, out: list) -> None:
    """One streamed request of session i: appends (latency s, first-token s, completion tokens, replica or None)."""
    t0 = time.perf_counter()
    first, usage = None, None
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
        max_tokens=tokens, temperature=0, user=f"bench-{i}-{time.monotonic_ns()}", stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in raw.parse():
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage is not None:
            usage = chunk.usage
    out.append((time.perf_counter() - t0, first or 0.0, usage.completion_tokens if usage else 0,
                raw.headers.get("x-replica")))


def _pct(values: list, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def load(client, model: str, clients: int, tokens: int, serial: bool = False) -> dict:
    """``clients`` requests at once (or one after another), each its own session: wall time, tokens/s over all,
    latency and time to first token (p50, p99)."""
    out: list = []
    threads = [threading.Thread(target=one, args=(client, model, i, tokens, out)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
        if serial:
            t.join()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if len(out) != clients:
        raise SystemExit(f"{clients - len(out)} of {clients} requests failed")
    toks = sum(k for _, _, k, _ in out)
    lat, ttft = [s for s, _, _, _ in out], [f for _, f, _, _ in out]
    return {"wall_s": wall, "tokens": toks, "tok_s": toks / wall, "latency_p50_s": _pct(lat, 0.5),
            "latency_p99_s": _pct(lat, 0.99), "ttft_p50_s": _pct(ttft, 0.5), "ttft_p99_s": _pct(ttft, 0.99),
            "replicas_used": len({r for _, _, _, r in out})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, HF directory or .gguf path")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--strategy", default="full")
    p.add_argument("--max-batch", default="16", help="engine batching.max_batch values, one table row set each")
    p.add_argument("--serial", action="store_true", help="also the same requests one after another")
    args = p.parse_args(argv)

    from openai import OpenAI

    from longctx_llm import Engine
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    name = "bench"
    rows = []
    for mb in [int(x) for x in args.max_batch.split(",")]:
        engine = Engine(args.model, strategy=args.strategy, device=args.device, batching={"max_batch": mb})
        _ = engine.loaded
        with LiveServer(create_app(engine, model_name=name)) as live:
            client = OpenAI(base_url=live.base_url, api_key="-", max_retries=0, timeout=3600)
            one(client, name, 0, args.tokens, [])  # warm-up
            first = None
            for n in [int(c) for c in args.clients.split(",")]:
                row = {"max_batch": mb, "clients": n, **load(client, name, n, args.tokens)}
                first = first or row["tok_s"]
                row["vs_one_client"] = row["tok_s"] / first
                if args.serial and n > 1:
                    ser = load(client, name, n, args.tokens, serial=True)
                    row["serial_tok_s"], row["vs_serial"] = ser["tok_s"], row["tok_s"] / ser["tok_s"]
                rows.append(row)
        loaded = engine.loaded
    print(f"model {engine.model_name} on {loaded.device} ({loaded.dtype}); strategy {args.strategy}; greedy, "
          f"{args.tokens} tokens per request; one server, one engine")
    cols = ["max_batch", "clients", "wall_s", "tokens", "tok_s", "latency_p50_s", "latency_p99_s", "ttft_p50_s",
            "ttft_p99_s", "vs_one_client"] + (["serial_tok_s", "vs_serial"] if args.serial else [])
    print_table(rows, cols)
    return 0


if __name__ == "__main__":
    sys.exit(main())
