"""Throughput of ``longctx serve`` under concurrent sessions: N clients at once, each its own session, one engine.

    python benchmarks/serve_throughput.py --model /root/smol.gguf --device cuda --clients 1,4,16 --tokens 128
    python benchmarks/serve_throughput.py --clients 1,4 --tokens 16          # CPU

Every client sends one chat completion (greedy, ``--tokens`` tokens, its own ``user`` = session id and its own
prompt) through the ``openai`` client to one server on 127.0.0.1; the row reports the wall time until all have
finished, the completion tokens per second over all clients, each request's latency (median, max), and the
throughput against one client. Requests share the engine's one model (a forward at a time per loaded model), so the
figure says how well the server keeps the device busy, not a batching speed-up.
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
    """One request of session i: appends (latency s, completion tokens, the replica that answered or None)."""
    t0 = time.perf_counter()
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
        max_tokens=tokens, temperature=0, user=f"bench-{i}-{time.monotonic_ns()}",
    )
    out.append((time.perf_counter() - t0, raw.parse().usage.completion_tokens, raw.headers.get("x-replica")))


def load(client, model: str, clients: int, tokens: int) -> dict:
    """``clients`` requests at once, each its own session: wall time, tokens/s over all, latency median/max."""
    out: list = []
    threads = [threading.Thread(target=one, args=(client, model, i, tokens, out)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if len(out) != clients:
        raise SystemExit(f"{clients - len(out)} of {clients} requests failed")
    toks = sum(k for _, k, _ in out)
    return {"wall_s": wall, "tokens": toks, "tok_s": toks / wall,
            "latency_median_s": statistics.median(s for s, _, _ in out), "latency_max_s": max(s for s, _, _ in out),
            "replicas_used": len({r for _, _, r in out})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, HF directory or .gguf path")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--device", default="auto")
    p.add_argument("--strategy", default="full")
    args = p.parse_args(argv)

    from openai import OpenAI

    from longctx_llm import Engine
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    engine = Engine(args.model, strategy=args.strategy, device=args.device)
    _ = engine.loaded
    name = "bench"
    rows = []
    with LiveServer(create_app(engine, model_name=name)) as live:
        client = OpenAI(base_url=live.base_url, api_key="-", max_retries=0, timeout=600)
        one(client, name, 0, args.tokens, [])  # warm-up
        for n in [int(c) for c in args.clients.split(",")]:
            rows.append({"clients": n, **load(client, name, n, args.tokens)})
    for r in rows:
        r["vs_one_client"] = r["tok_s"] / rows[0]["tok_s"]
    loaded = engine.loaded
    print(f"model {engine.model_name} on {loaded.device} ({loaded.dtype}); strategy {args.strategy}; greedy, "
          f"{args.tokens} tokens per request; one server, one engine")
    print_table(rows, ["clients", "wall_s", "tokens", "tok_s", "latency_median_s", "latency_max_s", "vs_one_client"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
