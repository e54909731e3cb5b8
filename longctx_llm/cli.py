"""The ``longctx`` command: run, chat, plugins, validate, schema, eval (ppl, stream)."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from typing import Optional, Sequence

from . import registry
from .errors import LongctxError

logger = logging.getLogger("longctx_llm")


def _cmd_run(args) -> int:
    from .pipeline import load_pipeline_with_component

    obj, component = load_pipeline_with_component(args.pipeline)
    for delta in component.respond(obj, args.prompt, session_id="run"):
        sys.stdout.write(delta)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def _cmd_chat(args) -> int:
    from .pipeline import load_pipeline_with_component

    obj, component = load_pipeline_with_component(args.pipeline)
    interactive = sys.stdin.isatty()
    if interactive:
        print("longctx chat: type a message; /reset clears the session, /exit or Ctrl-D quits.", file=sys.stderr)
    session_id = "cli"
    while True:
        if interactive:
            sys.stderr.write("> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            component.reset(obj, session_id)
            print("(session reset)", file=sys.stderr)
            continue
        try:
            for delta in component.respond(obj, text, session_id=session_id):
                sys.stdout.write(delta)
                sys.stdout.flush()
        except LongctxError as e:  # a bad turn does not end the chat
            print(f"error: {e}", file=sys.stderr)
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def _cmd_plugins(args) -> int:
    rows = []
    bad = []
    for p in registry.all_plugins():
        rows.append({"name": p.name, "kind": p.kind, "version": p.version, "distribution": p.distribution})
        if p.conflicts:
            bad.append(f"{p.kind} {p.name!r} is claimed by: " + ", ".join(x.distribution for x in [p, *p.conflicts]))
    if args.json:
        print(json.dumps({"plugins": rows, "conflicts": bad}, indent=1))
    else:
        w = max([len(r["name"]) for r in rows] + [4])
        print(f"{'NAME':<{w}}  {'KIND':<9}  {'VERSION':<9}  DISTRIBUTION")
        for r in rows:
            print(f"{r['name']:<{w}}  {r['kind']:<9}  {r['version']:<9}  {r['distribution']}")
        for b in bad:
            print(f"conflict: {b}", file=sys.stderr)
    return 1 if bad else 0


def _cmd_validate(args) -> int:
    from .config import load_config

    cfg = load_config(args.pipeline)
    strategy = " + ".join(s.name for s in cfg.strategy) if isinstance(cfg.strategy, list) else cfg.strategy.name
    print(f"{args.pipeline}: ok (strategy {strategy}, memory {cfg.memory.name}, component {cfg.component.name})")
    return 0


def _cmd_schema(args) -> int:
    from .config import dump_schema

    print(dump_schema())
    return 0


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise LongctxError(f"--lengths: expected comma-separated integers, got {text!r}") from e
    if not lengths or any(n < 2 for n in lengths):
        raise LongctxError(f"--lengths: each length must be >= 2, got {text!r}")
    return lengths


def _cmd_eval_ppl(args) -> int:
    from .config import load_config
    from .engine import Engine
    from .textdata import read_text

    lengths = _parse_lengths(args.lengths)
    engine = Engine.from_config(load_config(args.pipeline))
    ids = engine.tokenize(read_text(args.text), add_special_tokens=False)
    results = []
    for n in lengths:
        if n > len(ids):
            raise LongctxError(f"--lengths: {n} exceeds the {len(ids)} tokens of {args.text}")
        nll = engine.score(ids[:n])
        results.append({"strategy": engine.strategy.name, "length": n, "ppl": round(math.exp(nll.mean().item()), 4)})
        if not args.json:
            print(f"{engine.strategy.name:<10} {n:>8} tokens  ppl {results[-1]['ppl']:.3f}", flush=True)
    if args.json:
        print(json.dumps({"results": results}))
    return 0


def segment_perplexity(nll, every: int) -> list[dict]:
    """Perplexity of each successive ``every``-token segment of per-token NLLs (n-1,) of an n-token text.

    ``tokens_seen`` is the number of text tokens streamed when the segment ends (NLL i predicts token i + 1).
    """
    if every <= 0:
        raise LongctxError(f"--every: must be > 0, got {every}")
    out = []
    for start in range(0, len(nll), every):
        seg = nll[start : start + every]
        out.append({"tokens_seen": start + len(seg) + 1, "ppl": round(math.exp(float(seg.mean())), 4)})
    return out


def _cmd_eval_stream(args) -> int:
    from .config import load_config
    from .engine import Engine
    from .textdata import read_text

    if args.tokens < 2:
        raise LongctxError(f"--tokens: must be >= 2, got {args.tokens}")
    if args.every <= 0:
        raise LongctxError(f"--every: must be > 0, got {args.every}")
    engine = Engine.from_config(load_config(args.pipeline))
    ids = engine.tokenize(read_text(args.text), add_special_tokens=False)
    if args.tokens > len(ids):
        raise LongctxError(f"--tokens: {args.tokens} exceeds the {len(ids)} tokens of {args.text}")
    nll = engine.score(ids[: args.tokens], chunk_size=min(args.every, 4096))
    results = segment_perplexity(nll, args.every)
    if args.json:
        print(json.dumps({"results": results}))
    else:
        for r in results:
            print(f"{engine.strategy.name:<10} {r['tokens_seen']:>10} tokens  ppl {r['ppl']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longctx", description="Long-context strategies for local models.")
    p.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="answer one prompt with a pipeline")
    r.add_argument("pipeline", help="YAML pipeline file")
    r.add_argument("--prompt", required=True, help="the user message")
    r.set_defaults(fn=_cmd_run)

    c = sub.add_parser("chat", help="interactive chat with a pipeline (streams tokens)")
    c.add_argument("pipeline")
    c.set_defaults(fn=_cmd_chat)

    pl = sub.add_parser("plugins", help="list installed strategies, memories and components")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=_cmd_plugins)

    v = sub.add_parser("validate", help="check a pipeline file")
    v.add_argument("pipeline")
    v.set_defaults(fn=_cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of pipeline files")
    s.set_defaults(fn=_cmd_schema)

    e = sub.add_parser("eval", help="evaluations")
    esub = e.add_subparsers(dest="eval_command", required=True)
    ppl = esub.add_parser("ppl", help="perplexity of the first N tokens of a text file at each length")
    ppl.add_argument("pipeline")
    ppl.add_argument("--text", required=True, help="a .txt file, or .jsonl[.gz] with a 'text' field per line")
    ppl.add_argument("--lengths", default="4096", help="comma-separated token counts, e.g. 4096,16384")
    ppl.add_argument("--json", action="store_true")
    ppl.set_defaults(fn=_cmd_eval_ppl)
    st = esub.add_parser("stream", help="stream N tokens of a text file; perplexity of each successive K-token segment")
    st.add_argument("pipeline")
    st.add_argument("--text", required=True, help="a .txt file, or .jsonl[.gz] with a 'text' field per line")
    st.add_argument("--tokens", type=int, default=16384, help="tokens of the text to stream (N)")
    st.add_argument("--every", type=int, default=4096, help="segment length in tokens (K)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=_cmd_eval_stream)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level: invalid level {args.log_level!r} (valid: DEBUG, INFO, WARNING, ERROR)")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.fn(args)
    except LongctxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
