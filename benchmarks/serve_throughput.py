"""Throughput of ``longctx serve`` under concurrent sessions: N clients at once, each its own session, one engine.

    python benchmarks/serve_throughput.py --model /root/smol.gguf --device cuda --clients 1,4,16,64 --tokens 128
    python benchmarks/serve_throughput.py --clients 1,8 --tokens 32 --serial          # CPU: the issue-24 goal
    python benchmarks/serve_throughput.py --shape llama-8b --layers 32 --vocab 49152 --prompt-tokens 4096 \
        --model /root/smol.gguf --strategy full,dca,streaming --clients 1,16,64     # the 8B shape, 4k prompts

Every client sends one streamed chat completion (greedy, ``--tokens`` tokens, its own ``user`` = session id and its
own prompt) through the ``openai`` client to one server on 127.0.0.1. A row reports the wall time until all have
finished, the completion tokens per second over all clients, each request's latency (p50, p99) and time to its first
token (p50, p99), and the throughput against one client; ``--serial`` also sends the same N requests one after
another (``serial_tok_s``, ``vs_serial``). ``--max-batch 1,16`` runs the whole table once per engine setting
(1: every request on its own, the server before continuous batching; 16: the default). ``--strategy full,dca``
runs it once per strategy on the same loaded model.

The clients run in ``--client-procs`` processes of their own (default 2), threads in each, as a server's clients
would: the ``openai`` client parses every streamed chunk in Python, and in the server's process those threads would
contend with the scheduler for the interpreter lock at every token of every row (``--client-procs 0``: in the server's
process, as the tables of 2026-12-07 ran).

``--shape llama-8b``: a random-weight Llama-3-8B-shaped model (``--layers`` of its 32; SmolLM2's tokenizer, so
``--vocab 49152`` keeps every sampled id decodable); its end-of-text logits are pinned to 0 (random logits would
end a reply at any step), so every reply runs its ``--tokens``. ``--prompt-tokens N`` pads each client's prompt to
about N tokens with filler text of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_shape_args, load_shape, print_table  # noqa: E402

TOPICS = ["a lighthouse", "a desert caravan", "a city library", "a mountain village", "a ship's cook", "a clockmaker",
          "a river ferry", "an orchard", "a night train", "a radio station", "a bakery", "a glacier camp",
          "a chess club", "a lost kite", "a market stall", "a snowed-in inn"]


FILLER = ("The notes below were kept by {who} over one long season, day by day, with the weather, the work done "
          "and the people met. ")


def prompt(i: int, tokenizer=None, tokens: int = 0) -> str:
    """Session i's request: a story prompt, after about ``tokens`` tokens of its own filler (0: none)."""
    ask = f"Write a long story about {TOPICS[i % len(TOPICS)]}."
    if not tokens:
        return ask
    unit = FILLER.format(who=f"keeper {i}")
    per = max(1, len(tokenizer(unit, add_special_tokens=False)["input_ids"]))
    return unit * max(1, tokens // per) + ask


def one(client, model: str, i: int, tokens: int, out: list, text: str = "") -> None:
    """One streamed request of session i: appends (latency s, first-token s, completion tokens, replica or None)."""
    t0 = time.perf_counter()
    first, usage = None, None
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": text or prompt(i)}],
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


def one_direct(engine, i: int, tokens: int, out: list, text: str = "") -> None:
    """``--direct``: the same request through ``engine.stream_chat``, no server (a table with and without it tells the
    HTTP layer's share)."""
    t0 = time.perf_counter()
    first = None
    stream = engine.stream_chat([{"role": "user", "content": text or prompt(i)}],
                                session_id=f"bench-{i}-{time.monotonic_ns()}", max_new_tokens=tokens, temperature=0.0)
    for piece in stream:
        if first is None and piece:
            first = time.perf_counter() - t0
    out.append((time.perf_counter() - t0, first or 0.0, stream.completion.completion_tokens, None))


def _pct(values: list, q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def _run_threads(threads: list, serial: bool) -> None:
    """Start the clients' threads all at once (``serial``: each after the last has finished); wait for all."""
    for t in threads:
        t.start()
        if serial:
            t.join()
    for t in threads:
        t.join()


def load(client, model: Optional[str], clients: int, tokens: int, serial: bool = False, texts=None) -> dict:
    """``clients`` requests at once (or one after another), each its own session: wall time, tokens/s over all,
    latency and time to first token (p50, p99). ``model`` None: ``client`` is the engine itself (``--direct``);
    ``client`` a :class:`ClientProcesses`: the requests are sent from its processes."""
    if isinstance(client, ClientProcesses):
        out, wall = client.load(model, clients, tokens, serial, texts)
    else:
        out = []

        def send(i: int) -> None:
            text = texts[i] if texts else ""
            if model is None:
                one_direct(client, i, tokens, out, text)
            else:
                one(client, model, i, tokens, out, text)

        t0 = time.perf_counter()
        _run_threads([threading.Thread(target=send, args=(i,)) for i in range(clients)], serial)
        wall = time.perf_counter() - t0
    if len(out) != clients:
        raise SystemExit(f"{clients - len(out)} of {clients} requests failed")
    toks = sum(k for _, _, k, _ in out)
    lat, ttft = [s for s, _, _, _ in out], [f for _, f, _, _ in out]
    return {"wall_s": wall, "tokens": toks, "tok_s": toks / wall, "latency_p50_s": _pct(lat, 0.5),
            "latency_p99_s": _pct(lat, 0.99), "ttft_p50_s": _pct(ttft, 0.5), "ttft_p99_s": _pct(ttft, 0.99),
            "replicas_used": len({r for _, _, _, r in out})}


_CLIENT = None


def _client_init(base_url: str) -> None:
    """A client process: one ``openai`` client, made once."""
    global _CLIENT
    from openai import OpenAI

    _CLIENT = OpenAI(base_url=base_url, api_key="-", max_retries=0, timeout=3600)


def _client_share(model: str, indices: list, tokens: int, texts, start_at: float, serial: bool) -> tuple:
    """In a client process: requests ``indices`` from ``start_at`` (wall clock), at once or one after another;
    their (latency, first token, tokens, replica) and the wall-clock end."""
    out: list = []
    threads = [threading.Thread(target=one, args=(_CLIENT, model, i, tokens, out, texts[i] if texts else ""))
               for i in indices]
    while time.time() < start_at:
        time.sleep(0.0005)
    _run_threads(threads, serial)
    return out, time.time()


class ClientProcesses:
    """``--client-procs N``: the clients' threads spread over N processes, started together at one wall-clock time."""

    def __init__(self, base_url: str, procs: int):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.procs = procs
        self.pools = [ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_client_init,
                                          initargs=(base_url,)) for _ in range(procs)]
        for f in [pool.submit(time.time) for pool in self.pools]:  # started and imported before anything is timed
            f.result()

    def load(self, model: str, clients: int, tokens: int, serial: bool, texts) -> tuple[list, float]:
        shares = [[i for i in range(clients) if serial or i % self.procs == p] for p in range(self.procs)]
        shares = shares[:1] if serial else shares  # one after another: one process
        start_at = time.time() + 0.2
        futures = [pool.submit(_client_share, model, share, tokens, texts, start_at, serial)
                   for pool, share in zip(self.pools, shares) if share]
        out, end = [], start_at
        for f in futures:
            part, t = f.result()
            out.extend(part)
            end = max(end, t)
        return out, end - start_at

    def close(self) -> None:
        for pool in self.pools:
            pool.shutdown()


def _print_profile(yappi, top: int = 40) -> None:
    """The profiled load's functions by time spent in them (not in callees), over all threads, and per thread."""
    stats = yappi.get_func_stats()
    stats.sort("tsub", "desc")
    print(f"-- yappi (wall clock): top {top} functions by own time", file=sys.stderr)
    for f in list(stats)[:top]:
        print(f"{f.tsub:9.3f} s own {f.ttot:9.3f} s total {f.ncall:8d} calls  {f.module.split('/')[-1]}:{f.lineno} "
              f"{f.name}", file=sys.stderr)
    for t in yappi.get_thread_stats():
        print(f"thread {t.name} {t.id}: {t.ttot:.3f} s", file=sys.stderr)
    yappi.clear_stats()


def _no_end_of_text(loaded) -> None:
    """A random model's end-of-text logits pinned to 0, so that its greedy replies run their length."""
    import torch

    ids = sorted(i for i in loaded.eos_token_ids if i < loaded.model.lm_head.weight.shape[0])
    with torch.no_grad():
        loaded.model.lm_head.weight[ids] = 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_shape_args(p, layers=32)
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=0, help="pad each prompt to about this many tokens (0: none)")
    p.add_argument("--strategy", default="full", help="one strategy, or several comma-separated (one table each)")
    p.add_argument("--max-batch", default="16", help="engine batching.max_batch values, one table row set each")
    p.add_argument("--serial", action="store_true", help="also the same requests one after another")
    p.add_argument("--direct", action="store_true", help="the engine's stream_chat in threads, no server")
    p.add_argument("--client-procs", type=int, default=2,
                   help="processes the clients run in (0: threads in the server's own process)")
    p.add_argument("--profile", type=int, default=0,
                   help="with N > 0: a yappi profile (all threads) of the N-client load, its top functions printed")
    args = p.parse_args(argv)

    from openai import OpenAI

    from longctx_llm import Engine
    from longctx_serve import create_app
    from longctx_serve.testing import LiveServer

    loaded = load_shape(args)
    if args.shape != "smollm2":
        _no_end_of_text(loaded)
    counts = [int(c) for c in args.clients.split(",")]
    texts = [prompt(i, loaded.tokenizer, args.prompt_tokens) for i in range(max(counts))]
    name = "bench"
    rows = []
    for strategy in args.strategy.split(","):
        for mb in [int(x) for x in args.max_batch.split(",")]:
            engine = Engine(loaded, strategy=strategy, batching={"max_batch": mb})
            _ = engine.loaded
            with contextlib.ExitStack() as stack:
                if args.direct:
                    client, served = engine, None
                    one_direct(engine, 0, args.tokens, [], texts[0])  # warm-up
                else:
                    served = name
                    live = stack.enter_context(LiveServer(create_app(engine, model_name=name)))
                    client = OpenAI(base_url=live.base_url, api_key="-", max_retries=0, timeout=3600)
                    one(client, name, 0, args.tokens, [], texts[0])  # warm-up
                    if args.client_procs > 0:
                        client = ClientProcesses(live.base_url, args.client_procs)
                        stack.callback(client.close)
                first = None
                for n in counts:
                    if n == args.profile:
                        import yappi

                        yappi.set_clock_type("wall")
                        yappi.start()
                    row = {"strategy": strategy, "max_batch": mb, "clients": n, "direct": args.direct,
                           "client_procs": 0 if args.direct else args.client_procs,
                           **load(client, served, n, args.tokens, texts=texts)}
                    if n == args.profile:
                        yappi.stop()
                        _print_profile(yappi)
                    first = first or row["tok_s"]
                    row["vs_one_client"] = row["tok_s"] / first
                    if args.serial and n > 1:
                        ser = load(client, served, n, args.tokens, serial=True, texts=texts)
                        row["serial_tok_s"], row["vs_serial"] = ser["tok_s"], row["tok_s"] / ser["tok_s"]
                    rows.append(row)
                    print("row:", {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
                          file=sys.stderr, flush=True)  # a run cut short still leaves its rows
    prompt_note = f"prompts of ~{args.prompt_tokens} tokens" if args.prompt_tokens else "short prompts"
    print(f"model {engine.model_name} ({args.shape}) on {loaded.device} ({loaded.dtype}); greedy, {args.tokens} "
          f"tokens per request, {prompt_note}; one server, one engine per row set")
    cols = ["strategy", "max_batch", "clients", "direct", "client_procs", "wall_s", "tokens", "tok_s", "latency_p50_s", "latency_p99_s",
            "ttft_p50_s", "ttft_p99_s", "vs_one_client"] + (["serial_tok_s", "vs_serial"] if args.serial else [])
    print_table(rows, cols)
    return 0


if __name__ == "__main__":
    sys.exit(main())
