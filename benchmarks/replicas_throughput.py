"""Throughput of N engine replicas behind Ray Serve (one per GPU) against one, under the same concurrent sessions.

    python benchmarks/replicas_throughput.py --model /root/smol.gguf --replicas 1,2 --clients 16 --tokens 128
    python benchmarks/replicas_throughput.py --replicas 1,2 --clients 4 --tokens 8 --num-cpus 1   # CPU dry run

For each replica count, a fresh Ray Serve application (``longctx_serve.ray_app.run``: the router pins every session
to ``sha256(id) mod N``) is deployed; ``--clients`` clients then send one chat completion each at once (greedy,
``--tokens`` tokens, each its own session in the ``user`` field and its own prompt) through the ``openai`` client. A
row reports the wall time until all have finished, completion tokens per second over all clients, request latency
(median, max), how many replicas served, and the throughput against the first row (the issue's goal: 2 replicas on
2 GPUs at least 1.8x one). Replicas take one GPU each when the machine has GPUs (``--num-gpus``), else CPUs.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402
from serve_throughput import load  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, HF directory or .gguf path")
    p.add_argument("--replicas", default="1,2", help="replica counts, one application each")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--strategy", default="full")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default: 1 if there are GPUs)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica")
    args = p.parse_args(argv)

    import ray
    import torch
    from openai import OpenAI
    from ray import serve

    from longctx_serve.ray_app import run

    counts = [int(c) for c in args.replicas.split(",")]
    gpus = torch.cuda.device_count()
    name = "bench"
    pipeline = {"model": {"source": args.model}, "strategy": {"name": args.strategy},
                "generation": {"temperature": 0.0}}
    ray.init(num_cpus=max(2, int(max(counts) * args.num_cpus) + 1), num_gpus=gpus, include_dashboard=False,
             log_to_driver=False)
    rows = []
    try:
        for n in counts:
            port = _free_port()
            t0 = time.perf_counter()
            run(pipeline, n, port=port, model_name=name, num_gpus=args.num_gpus, num_cpus=args.num_cpus,
                name=f"bench{n}")
            ready = time.perf_counter() - t0
            client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=0, timeout=900)
            load(client, name, max(n, 2), min(args.tokens, 16))  # warm-up: every replica's first requests
            row = {"replicas": n, "clients": args.clients, "deploy_s": ready,
                   **load(client, name, args.clients, args.tokens)}
            rows.append(row)
            print(row, flush=True)
            serve.shutdown()
    finally:
        ray.shutdown()
    for r in rows:
        r["vs_first"] = r["tok_s"] / rows[0]["tok_s"]
    print(f"model {args.model}; strategy {args.strategy}; {gpus} GPU(s) on this machine; greedy, {args.tokens} "
          f"tokens per request; {args.clients} concurrent sessions")
    print_table(rows, ["replicas", "clients", "deploy_s", "wall_s", "tokens", "tok_s", "latency_p50_s",
                       "latency_p99_s", "replicas_used", "vs_first"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
