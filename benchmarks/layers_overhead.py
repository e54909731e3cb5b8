"""What the layers around the engine cost, and the engine against transformers' own ``generate``: time to first
token and tokens/s of one greedy reply through each path, on one engine in one run (interleaved, median of
``--runs``), each against ``engine.stream_chat``.

    python benchmarks/layers_overhead.py --device cuda --tokens 200 --runs 5
    python benchmarks/layers_overhead.py --tokens 32 --runs 2        # CPU
    python benchmarks/layers_overhead.py --paths engine,http --tokens 64 --runs 5         # HTTP against in-process
    python benchmarks/layers_overhead.py --paths engine,generate --device cpu --tokens 128 --runs 7   # issue 15

Paths (``--paths``, the engine always first): ``run``: ``longctx run PIPELINE --prompt P`` without process start and
model load, the same component and ``respond`` call the command makes on the loaded engine; ``langchain``:
``ChatLongctx.stream``; ``llamaindex``: ``LongctxLLM.stream_chat``; ``stepwise``: the engine with ``lookahead:
false`` (each decode step queued only after the host has read the previous token; strategies that have the option);
``http``: the ``openai`` client streaming from ``longctx serve``'s app on 127.0.0.1 (needs the server package and
``openai``); ``generate``: transformers' ``generate`` on the same loaded model from the same chat prompt, greedy.
Every path answers the same one-turn chat with no session (``run``'s session is reset before each run), so each pays
one prefill and the same decode steps. The prompt asks for a long story, so every path runs to the token limit; the
table reports the tokens produced.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, reply_timing  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def timed(chunks) -> dict:
    """Consume a stream; when it started, when its first chunk came, when it ended, how many chunks."""
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in chunks:
        if first is None:
            first = time.perf_counter()
        n += 1
    return {"t0": t0, "first": first, "end": time.perf_counter(), "chunks": n}


def row(t: dict, tokens: int) -> dict:
    return reply_timing(t["t0"], t["first"], t["end"], tokens)


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
    return reply_timing(t0, first, time.perf_counter(), n)


def generate_path(engine, messages, tokens: int):
    """transformers' ``generate`` on the engine's loaded model, from the prompt the engine renders, greedy; a
    streamer notes when the first new token arrives."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self):
            self.times = []

        def put(self, value):  # first the prompt, then every new token
            self.times.append(time.perf_counter())

        def end(self):
            pass

    loaded = engine.loaded
    ids = engine.tokenize(engine.render_chat(messages, add_generation_prompt=True), add_special_tokens=False)
    x = torch.tensor([ids], device=loaded.device)

    def run():
        clock = Clock()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = loaded.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, do_sample=False,
                                        pad_token_id=loaded.tokenizer.eos_token_id, streamer=clock)
        first = clock.times[1] if len(clock.times) > 1 else None
        return reply_timing(t0, first, time.perf_counter(), out.shape[1] - len(ids))

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, HF directory or .gguf path")
    p.add_argument("--tokens", type=int, default=200, help="max tokens of the greedy reply")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--strategy", default="full")
    p.add_argument("--paths", default="engine,run,langchain,llamaindex,stepwise",
                   help=f"comma-separated, of {', '.join(PATHS)}; the engine is always measured, first")
    args = p.parse_args(argv)
    wanted = [x.strip() for x in args.paths.split(",") if x.strip() and x.strip() != "engine"]
    unknown = [x for x in wanted if x not in PATHS]
    if unknown:
        raise SystemExit(f"--paths: unknown {unknown} (known: {', '.join(PATHS)})")

    from longctx_llm.pipeline import load_pipeline_with_component

    obj, component = load_pipeline_with_component({
        "model": {"source": args.model, "device": args.device},
        "strategy": {"name": args.strategy},
        "generation": {"max_new_tokens": args.tokens, "temperature": 0.0},
    })
    engine = obj.engine if hasattr(obj, "engine") else obj
    _ = engine.loaded
    messages = [{"role": "user", "content": PROMPT}]

    def engine_path(e=engine):
        stream = e.stream_chat(messages, max_new_tokens=args.tokens, temperature=0.0)
        t = timed(stream)
        return row(t, stream.completion.completion_tokens)

    paths = {PATHS["engine"]: engine_path}
    with contextlib.ExitStack() as stack:
        for name in wanted:
            fn = make_path(name, args, engine, obj, component, messages, engine_path, stack)
            if fn is not None:
                paths[PATHS[name]] = fn
        for fn in paths.values():  # warm-up (allocator, kernels, CUDA graphs)
            fn()
        results = {name: [] for name in paths}
        for _ in range(args.runs):
            for name, fn in paths.items():
                results[name].append(fn())
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    base = med[PATHS["engine"]]
    rows = []
    for name, m in med.items():
        rows.append({"path": name, **m, "tok_s_vs_engine": m["tok_s"] / base["tok_s"],
                     "ttft_vs_engine": m["ttft_ms"] / base["ttft_ms"]})
    loaded = engine.loaded
    print(f"model {engine.model_name} on {loaded.device} ({loaded.dtype}); strategy {args.strategy}; greedy, max "
          f"{args.tokens} tokens; median of {args.runs} interleaved runs")
    print_table(rows, ["path", "ttft_ms", "total_s", "tokens", "tok_s", "decode_tok_s", "tok_s_vs_engine",
                       "ttft_vs_engine"])
    return 0


PATHS = {
    "engine": "engine.stream_chat",
    "run": "longctx run (component.respond)",
    "langchain": "LangChain ChatLongctx.stream",
    "llamaindex": "LlamaIndex LongctxLLM.stream_chat",
    "stepwise": "engine, lookahead: false",
    "http": "HTTP (openai client, SSE)",
    "generate": "transformers generate",
}


def make_path(name, args, engine, obj, component, messages, engine_path, stack):
    """The measured call of one path (None: the strategy has no such option); imports only what the path needs."""
    if name == "run":
        def run_path():
            component.reset(obj, "run")
            parts = []
            t = timed(parts.append(d) or d for d in component.respond(obj, PROMPT, session_id="run"))
            return row(t, len(engine.tokenizer("".join(parts), add_special_tokens=False)["input_ids"]))

        return run_path
    if name == "langchain":
        from langchain_longctx import ChatLongctx

        chat = ChatLongctx.from_engine(engine, max_tokens=args.tokens, temperature=0.0)

        def langchain_path():
            parts = []
            t = timed(parts.append(c) or c for c in chat.stream(PROMPT))
            usage = getattr(parts[-1], "usage_metadata", None) if parts else None
            text = "".join(c.content for c in parts)
            return row(t, usage["output_tokens"] if usage else len(engine.tokenizer(text)["input_ids"]))

        return langchain_path
    if name == "llamaindex":
        from llama_index.core.llms import ChatMessage
        from llama_index.llms.longctx import LongctxLLM

        llm = LongctxLLM(engine=engine, max_tokens=args.tokens, temperature=0.0)

        def llama_index_path():
            parts = []
            t = timed(parts.append(r) or r for r in llm.stream_chat([ChatMessage(role="user", content=PROMPT)]))
            text = parts[-1].message.content if parts else ""
            return row(t, len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]))

        return llama_index_path
    if name == "stepwise":  # what decoding one step ahead is worth (strategies that have it: full, dca, rcc)
        if "lookahead" not in engine.strategy.Options.model_fields:
            return None
        from longctx_llm import Engine

        stepwise = Engine(engine.loaded, strategy={"name": args.strategy, "lookahead": False},
                          generation={"max_new_tokens": args.tokens, "temperature": 0.0})
        return lambda: engine_path(stepwise)
    if name == "http":
        from openai import OpenAI

        from longctx_serve import create_app
        from longctx_serve.testing import LiveServer

        live = stack.enter_context(LiveServer(create_app(engine, model_name="bench")))
        client = OpenAI(base_url=live.base_url, api_key="-", max_retries=0)
        return lambda: over_http(client, "bench", messages, args.tokens)
    return generate_path(engine, messages, args.tokens)


if __name__ == "__main__":
    sys.exit(main())
