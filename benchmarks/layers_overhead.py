"""What the integration layers cost over the engine: time to first token and tokens/s of one greedy reply through
``engine.stream_chat``, ``longctx run``'s path, LangChain's ``ChatLongctx.stream`` and LlamaIndex's
``LongctxLLM.stream_chat``, on one engine in one run (interleaved, median of ``--runs``).

    python benchmarks/layers_overhead.py --device cuda --tokens 200 --runs 5
    python benchmarks/layers_overhead.py --tokens 32 --runs 2        # CPU

``longctx run PIPELINE --prompt P`` is measured without process start and model load: the same component and
``respond`` call the command makes, on an engine that is already loaded. Every path answers the same one-turn chat
with no session (``run``'s session is reset before each run), so each pays one prefill and the same decode steps.
The prompt asks for a long story, so every path runs to the token limit; the table reports the tokens produced.
The last row is the engine with ``lookahead: false`` (each decode step queued only after the host has read the
previous token), beside the default that overlaps the two.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias, HF directory or .gguf path")
    p.add_argument("--tokens", type=int, default=200, help="max tokens of the greedy reply")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--strategy", default="full")
    args = p.parse_args(argv)

    from langchain_longctx import ChatLongctx
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.longctx import LongctxLLM

    from longctx_llm.pipeline import load_pipeline_with_component

    obj, component = load_pipeline_with_component({
        "model": {"source": args.model, "device": args.device},
        "strategy": {"name": args.strategy},
        "generation": {"max_new_tokens": args.tokens, "temperature": 0.0},
    })
    engine = obj.engine if hasattr(obj, "engine") else obj
    _ = engine.loaded
    chat = ChatLongctx.from_engine(engine, max_tokens=args.tokens, temperature=0.0)
    llm = LongctxLLM(engine=engine, max_tokens=args.tokens, temperature=0.0)
    messages = [{"role": "user", "content": PROMPT}]

    def engine_path(e=engine):
        stream = e.stream_chat(messages, max_new_tokens=args.tokens, temperature=0.0)
        t = timed(stream)
        return row(t, stream.completion.completion_tokens)

    from longctx_llm import Engine

    # the same engine without decoding one step ahead (``lookahead: false``): what the overlap is worth (strategies
    # that have the option: full, dca, rcc)
    stepwise = None
    if "lookahead" in engine.strategy.Options.model_fields:
        stepwise = Engine(engine.loaded, strategy={"name": args.strategy, "lookahead": False},
                          generation={"max_new_tokens": args.tokens, "temperature": 0.0})

    def run_path_counted():
        component.reset(obj, "run")
        parts = []
        t = timed(parts.append(d) or d for d in component.respond(obj, PROMPT, session_id="run"))
        text = "".join(parts)
        return row(t, len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]))

    def langchain_path():
        parts = []
        t = timed(parts.append(c) or c for c in chat.stream(PROMPT))
        usage = getattr(parts[-1], "usage_metadata", None) if parts else None
        n = usage["output_tokens"] if usage else len(engine.tokenizer("".join(c.content for c in parts))["input_ids"])
        return row(t, n)

    def llama_index_path():
        parts = []
        t = timed(parts.append(r) or r for r in llm.stream_chat([ChatMessage(role="user", content=PROMPT)]))
        text = parts[-1].message.content if parts else ""
        return row(t, len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]))

    paths = {
        "engine.stream_chat": engine_path,
        "longctx run (component.respond)": run_path_counted,
        "LangChain ChatLongctx.stream": langchain_path,
        "LlamaIndex LongctxLLM.stream_chat": llama_index_path,
    }
    if stepwise is not None:
        paths["engine, lookahead: false"] = lambda: engine_path(stepwise)
    for fn in paths.values():  # warm-up (allocator, kernels, CUDA graphs)
        fn()
    results = {name: [] for name in paths}
    for _ in range(args.runs):
        for name, fn in paths.items():
            results[name].append(fn())
    med = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    base = med["engine.stream_chat"]
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


if __name__ == "__main__":
    sys.exit(main())
