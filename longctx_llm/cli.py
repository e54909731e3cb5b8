"""The ``longctx`` command: run, chat, plugins, validate, schema, cache, train, eval; and the commands other
distributions register under the entry-point group ``longctx_llm.commands`` (``serve``, from longctx-serve)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Optional, Sequence

from . import registry
from .errors import InputError, LongctxError, PluginError
from .eval.options import KEY_NLL_HELP, SAME_TOKENS_HELP, parse_ints, parse_lengths
from .eval.textdata import split_text
from .runtime import tensor_parallel

logger = logging.getLogger("longctx_llm")


def _build_engine(config):
    """A follower's engine for a pipeline rank 0 built (tensor parallel under torchrun)."""
    from .runtime.engine import Engine

    return Engine.from_config(config)


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
    component.load(obj)  # before the first prompt, not in the middle of the first reply
    try:  # bytes that are not UTF-8 become an error for that line (InputError), not the end of the chat
        sys.stdin.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError):
        pass
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


def plain_text(doc: str) -> str:
    """A docstring line for a terminal: reStructuredText literals (````x````) and roles (``:class:`~a.B```) as
    plain words."""
    import re

    def role(m: "re.Match") -> str:
        text = m.group(2).strip()
        return text.rsplit(".", 1)[-1] if m.group(1) else text  # ~a.b.C shows C

    doc = re.sub(r":[a-z]+:`(~?)([^`<]*)(?:<[^`>]*>)?`", role, doc)
    return re.sub(r"``([^`]+)``", r"\1", doc)


def _describe_plugin(name: str) -> int:
    """``longctx plugins NAME``: what a plugin is for and its options with their defaults."""
    found = [p for p in registry.all_plugins() if p.name == name]
    if not found:
        raise LongctxError(f"no installed plugin named {name!r} (installed: {', '.join(sorted({p.name for p in registry.all_plugins()}))})")
    for info in found:
        obj = info.load()
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        print(f"{info.name} ({info.kind}, {info.distribution} {info.version})")
        if doc:
            print(f"  {plain_text(doc[0])}")
        options = getattr(obj, "Options", None)
        fields = getattr(options, "model_fields", {}) if options is not None else {}
        if fields:
            print("  options:")
            for fname, f in fields.items():
                default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
                print(f"    {fname} = {default}  {plain_text(f.description or '')}".rstrip())
        elif info.kind in ("strategy", "memory"):
            print("  options: none")
    return 0


def _cmd_plugins(args) -> int:
    if args.name:
        return _describe_plugin(args.name)
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
    from .model.loading import resolve_source
    from .runtime.engine import Engine

    cfg = load_config(args.pipeline)
    resolve_source(cfg.model.source)  # the model must exist where the file says (alias installed, path present)
    engine = Engine.from_config(cfg)  # builds the strategy and the memory with their options; loads nothing
    engine.memory.check_strategy(engine.strategy)  # what `run` would refuse before its first turn
    strategy = " + ".join(s.name for s in cfg.strategy) if isinstance(cfg.strategy, list) else cfg.strategy.name
    print(f"{args.pipeline}: ok (strategy {strategy}, memory {cfg.memory.name}, component {cfg.component.name})")
    return 0


def _cmd_schema(args) -> int:
    from .config import dump_schema

    print(dump_schema())
    return 0


def _eval_setup(args):
    """(engine, token ids of --text) for an eval command."""
    from .config import load_config
    from .runtime.engine import Engine
    engine = Engine.from_config(load_config(args.pipeline))
    ids = engine.tokenize(split_text(args.text, args.split), add_special_tokens=False) if getattr(args, "text", None) else []
    return engine, ids


def _print_rows(rows: list[dict], as_json: bool, title: Optional[str] = None) -> None:
    if as_json:
        print(json.dumps({"results": rows}))
        return
    from .eval.report import format_table

    if title:
        print(title)
    print(format_table(rows))


def _cmd_eval_ppl(args) -> int:
    from .eval import evaluate

    lengths = parse_lengths(args.lengths)
    engine, ids = _eval_setup(args)
    _print_rows(tensor_parallel.call(evaluate.perplexity, engine, ids, lengths, same_tokens=args.same_tokens),
                args.json)
    return 0


def _cmd_eval_stream(args) -> int:
    from .eval import evaluate

    if args.tokens < 2:
        raise LongctxError(f"--tokens: must be >= 2, got {args.tokens}")
    if args.every <= 0:
        raise LongctxError(f"--every: must be > 0, got {args.every}")
    engine, ids = _eval_setup(args)
    _print_rows(tensor_parallel.call(evaluate.stream, engine, ids, args.tokens, args.every), args.json)
    return 0


def _cmd_eval_gap(args) -> int:
    from .eval import evaluate

    contexts = parse_ints(args.context, "--context")
    engine, ids = _eval_setup(args)
    multiples = parse_ints(args.recent_multiples, "--recent-multiples")
    rows = tensor_parallel.call(evaluate.gap, engine, ids, contexts, args.target, args.samples,
                                turn_tokens=args.turn_tokens, seed=args.seed, recent_multiples=multiples)
    _print_rows(rows, args.json)
    return 0


def _cmd_eval_chat(args) -> int:
    from .config import load_config
    from .eval import evaluate
    from .runtime.engine import Engine

    chats = evaluate.read_chats(args.chats)
    if args.max_new_tokens <= 0:
        raise InputError(f"--max-new-tokens: must be > 0, got {args.max_new_tokens}")
    engine = Engine.from_config(load_config(args.pipeline))
    rows = tensor_parallel.call(evaluate.chat_facts, engine, chats, args.max_new_tokens)
    if args.json:
        _print_rows(rows, True)
    else:
        for r in rows[0]["replies"]:
            print(f"{'ok ' if r['fact'] else '-- '}{'[markup] ' if r['markup'] else ''}{r['question']} -> {r['reply']!r}")
        _print_rows([{k: v for k, v in rows[0].items() if k != "replies"}], False)
    return 0


def _cmd_eval_recall(args) -> int:
    from .eval import evaluate

    contexts = parse_ints(args.context, "--context")
    engine, ids = _eval_setup(args)
    rows = tensor_parallel.call(
        evaluate.recall, engine, ids, contexts, args.span, args.cue, args.samples, turn_tokens=args.turn_tokens,
        seed=args.seed,
    )
    _print_rows(rows, args.json)
    return 0


def _filler_ids(engine, filler: str) -> Optional[list[int]]:
    if filler == "classic":
        return None
    from .eval.textdata import read_text

    return engine.tokenize(read_text(filler), add_special_tokens=False)


def _cmd_eval_passkey(args) -> int:
    from .eval import evaluate

    lengths = parse_lengths(args.lengths)
    depths = [d / 100 for d in parse_ints(args.depths, "--depths", minimum=0)]
    if any(d > 1 for d in depths):
        raise LongctxError(f"--depths: percentages between 0 and 100, got {args.depths!r}")
    engine, _ = _eval_setup(args)
    rows = tensor_parallel.call(evaluate.passkey, engine, lengths, depths, args.trials,
                                filler_ids=_filler_ids(engine, args.filler), seed=args.seed, key_nll=args.key_nll)
    _print_rows(rows, args.json)
    return 0


def _cmd_eval_speed(args) -> int:
    from .eval import evaluate

    lengths = parse_lengths(args.lengths)
    engine, ids = _eval_setup(args)
    if not ids:
        ids = list(range(1000, 1000 + 4096))  # no --text: a fixed token pattern (speed does not depend on content)
    rows = tensor_parallel.call(evaluate.speed, engine, ids, lengths, decode_tokens=args.decode_tokens)
    _print_rows(rows, args.json)
    return 0


def _cmd_eval_compare(args) -> int:
    from .eval import compare

    rows = compare.run(args)
    if args.json:
        print(json.dumps({"results": rows}))
    return 0


def _cmd_cache(args) -> int:
    from .model.loading import cache_entries, cache_root, clear_cache

    if args.action == "clear":
        freed = clear_cache()
        print(f"removed converted models under {cache_root()} ({freed / 2**20:.0f} MiB freed)")
        return 0
    entries = cache_entries()
    if args.json:
        print(json.dumps({"root": str(cache_root()), "entries": entries}))
        return 0
    print(f"cache root: {cache_root()} (LONGCTX_CACHE_DIR)")
    for e in entries:
        print(f"  {e['bytes'] / 2**20:8.0f} MiB  {e['path']}")
    print(f"  {sum(e['bytes'] for e in entries) / 2**20:8.0f} MiB in {len(entries)} converted model(s); "
          "`longctx cache clear` removes them (rebuilt on next use)")
    return 0


#: the core's own subcommands (a registered command of one of these names is ignored, with a warning)
BUILTIN_COMMANDS = {"run", "chat", "plugins", "validate", "schema", "cache", "train", "eval"}
#: commands that other distributions of this repository add (entry-point group ``longctx_llm.commands``): name ->
#: (what ``longctx --help`` says, what it needs, how to install it), shown while that distribution is missing
KNOWN_COMMANDS = {
    "serve": ("OpenAI-compatible HTTP server for a pipeline", "the server package",
              "pip install -e integrations/longctx-serve"),
}


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Option help with ``(default: X)``, except where there is no default (None) or the help already says it."""

    def _get_help_string(self, action):
        if action.default is None or "default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_plugin_commands(sub, builtin: set[str]) -> None:
    """A subcommand for each command another distribution registers (entry-point group ``longctx_llm.commands``):
    an object with ``help``, ``add_arguments(parser)`` and ``run(args) -> int`` (optionally ``description``).
    A known command that is not installed (:data:`KNOWN_COMMANDS`) still shows, with what installs it."""
    registered = {p.name: p for p in registry.available("command")}
    for name in sorted({*registered, *KNOWN_COMMANDS}):
        if name in builtin:
            logger.warning("command %r of %s is ignored: longctx has a command of that name", name,
                           registered[name].distribution)
            continue
        cmd, problem = None, ""
        if name in registered:
            try:
                cmd = registry.get("command", name)
            except PluginError as e:  # broken, or claimed twice: an error when it runs, not the whole CLI's
                problem = str(e)
        if cmd is None:
            _add_unusable(sub, name, problem)
            continue
        p = sub.add_parser(name, help=cmd.help, description=getattr(cmd, "description", None) or cmd.help,
                           formatter_class=_HelpWithDefaults)
        cmd.add_arguments(p)
        p.set_defaults(fn=cmd.run)


def _add_unusable(sub, name: str, problem: str) -> None:
    """A command that cannot run here (not installed, or failed to load: ``problem``) still shows in ``longctx
    --help``; running it, with whatever arguments, is one error that names the fix."""
    what, needs, install = KNOWN_COMMANDS.get(name, (None, None, None))
    p = sub.add_parser(name, help=f"{what} (needs: {install})" if install else f"(cannot run: {problem})",
                       add_help=False)

    def run(args) -> int:
        if install is None:
            raise PluginError(problem)
        raise LongctxError(f"longctx {name} needs {needs}, which is not installed"
                           + (f" ({problem})" if problem else "") + f": {install}")

    p.set_defaults(fn=run, any_arguments=True)  # its own arguments are unknown here: none is an error


def _cmd_train(args) -> int:
    """``longctx train NAME ...``: a trainer plugin (entry-point group ``longctx_llm.trainers``) parses the rest."""
    trainer = registry.get("trainer", args.trainer)
    sub = argparse.ArgumentParser(prog=f"longctx train {args.trainer}", description=getattr(trainer, "help", None))
    trainer.add_arguments(sub)
    targs = sub.parse_args(args.rest)
    logging.getLogger("longctx_llm.train").setLevel(logging.INFO)
    return int(trainer.run(targs) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="longctx",
        description="Long-context strategies for local models, chosen in a YAML pipeline file.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""strategies (strategy: {name: ...}) and memories (memory: {name: ...}):
  full        plain attention, the model as trained (the baseline)
  dca         Dual Chunk Attention: 8x the trained window, no training
  streaming   StreamingLLM: attention sinks + a fixed recent window, endless sessions
  rcc         Recurrent Context Compression: a long prompt compressed 32x by a trained compressor
  buffer      (memory) the conversation as text
  ccm         (memory) each finished chat turn kept as 2 compressed key/value slots

examples (pipelines in examples/pipelines/):
  longctx run examples/pipelines/quickstart.yaml --prompt "What is the capital of France?"
  longctx chat examples/pipelines/ccm_chat.yaml
  longctx serve examples/pipelines/quickstart.yaml --port 8000   OpenAI-compatible server
  longctx plugins rcc                      options of a plugin, with defaults
  longctx eval compare --pipelines a.yaml,b.yaml --suite ppl,speed --text tests/data/pydocs_tutorial.txt
""",
    )
    p.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ERROR)")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="answer one prompt with a pipeline")
    r.add_argument("pipeline", help="YAML pipeline file")
    r.add_argument("--prompt", required=True, help="the user message")
    r.set_defaults(fn=_cmd_run)

    c = sub.add_parser(
        "chat",
        help="interactive chat with a pipeline (streams tokens; /reset clears the session, /exit quits)",
        description="Interactive chat: type a message per line. /reset clears the session, /exit or Ctrl-D quits.",
    )
    c.add_argument("pipeline")
    c.set_defaults(fn=_cmd_chat)

    _add_plugin_commands(sub, BUILTIN_COMMANDS)  # serve, from the server's distribution

    pl = sub.add_parser("plugins", help="list installed strategies, memories and components (or describe one)")
    pl.add_argument("name", nargs="?", help="a plugin's name: print what it does and its options with defaults")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=_cmd_plugins)

    v = sub.add_parser("validate", help="check a pipeline file")
    v.add_argument("pipeline")
    v.set_defaults(fn=_cmd_validate)

    s = sub.add_parser("schema", help="print the JSON Schema of pipeline files")
    s.set_defaults(fn=_cmd_schema)

    ca = sub.add_parser("cache", help="list or clear converted models (GGUF de-quantised once, cached on disk)")
    ca.add_argument("action", nargs="?", choices=("list", "clear"), default="list")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(fn=_cmd_cache)

    trainers = registry.names("trainer")
    t = sub.add_parser(
        "train",
        help="train an adapter (e.g. ccm, rcc) for a model",
        description="Train an adapter. Installed trainers: " + (", ".join(trainers) or "none")
        + ". `longctx train NAME --help` lists a trainer's options.",
    )
    t.add_argument("trainer", choices=trainers or None, help="which adapter to train")
    t.add_argument("rest", nargs=argparse.REMAINDER, help="the trainer's own options")
    t.set_defaults(fn=_cmd_train)

    e = sub.add_parser("eval", help="evaluations")
    esub = e.add_subparsers(dest="eval_command", required=True)
    TEXT_HELP = "a .txt file, or .jsonl[.gz] with a 'text' field per line"

    def eval_parser(name: str, help: str, text_required: bool = True) -> argparse.ArgumentParser:
        e_ = esub.add_parser(name, help=help, description=help, formatter_class=_HelpWithDefaults)
        e_.add_argument("pipeline", help="YAML pipeline file (model + strategy + memory)")
        e_.add_argument("--text", required=text_required, default=None, help=TEXT_HELP)
        e_.add_argument(
            "--split", choices=("all", "heldout", "train"), default="all",
            help="which part of --text: all, or the documents adapter training held out (every 10th) or used",
        )
        e_.add_argument("--json", action="store_true", help='print one JSON object {"results": [...]}')
        return e_

    ppl = eval_parser("ppl", "perplexity of the first N tokens of a text file at each length")
    ppl.add_argument("--lengths", default="4096", help="comma-separated token counts, e.g. 4096,16384")
    ppl.add_argument("--same-tokens", action="store_true", help=SAME_TOKENS_HELP)
    ppl.set_defaults(fn=_cmd_eval_ppl)
    st = eval_parser("stream", "stream N tokens of a text file; perplexity of each successive K-token segment")
    st.add_argument("--tokens", type=int, default=16384, help="tokens of the text to stream (N)")
    st.add_argument("--every", type=int, default=4096, help="segment length in tokens (K)")
    st.set_defaults(fn=_cmd_eval_stream)
    g = eval_parser("gap", "how much of a context the pipeline uses: target perplexity with none / the last k raw tokens "
                           "(k = the positions the pipeline keeps) / pipeline / full context")
    g.add_argument("--context", default="1024", help="context lengths in tokens, e.g. 1024,4096")
    g.add_argument("--target", type=int, default=128, help="target tokens scored after the context")
    g.add_argument("--samples", type=int, default=32, help="samples per context length")
    g.add_argument("--turn-tokens", type=int, default=128, help="memory pipelines: context fed as turns of K tokens")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--recent-multiples", default="1",
                   help="a pipeline that keeps k < context positions is also compared with the last m*k raw tokens of "
                        "the context, for each m (e.g. 1,4: same cost, and four raw tokens per kept position)")
    g.set_defaults(fn=_cmd_eval_gap)
    rc = eval_parser("recall", "can the model reproduce a span of the context from a short cue (teacher-forced accuracy)")
    rc.add_argument("--context", default="1024", help="context lengths in tokens, e.g. 1024,4096")
    rc.add_argument("--span", type=int, default=64, help="tokens to reproduce")
    rc.add_argument("--cue", type=int, default=8, help="tokens of the context given before the span")
    rc.add_argument("--samples", type=int, default=32)
    rc.add_argument("--turn-tokens", type=int, default=128, help="memory pipelines: context fed as turns of K tokens")
    rc.add_argument("--seed", type=int, default=0)
    rc.set_defaults(fn=_cmd_eval_recall)
    chat_help = ("short multi-turn chats: does the last reply recall a fact from the first turn, and do replies stay "
                 "plain conversation (no docs markup)")
    ch = esub.add_parser("chat", help=chat_help, description=chat_help, formatter_class=_HelpWithDefaults)
    ch.add_argument("pipeline", help="YAML pipeline file (model + strategy + memory)")
    ch.add_argument("--chats", default=None, help="a JSON file of chats (default: the 24 shipped ones)")
    ch.add_argument("--max-new-tokens", type=int, default=48)
    ch.add_argument("--json", action="store_true", help='print one JSON object {"results": [...]}')
    ch.set_defaults(fn=_cmd_eval_chat)
    pk = eval_parser("passkey", "find a 5-digit pass key hidden at depths of filler text", text_required=False)
    pk.add_argument("--lengths", default="4096,8192", help="prompt lengths in tokens")
    pk.add_argument("--depths", default="10,50,90", help="depths of the key, percent")
    pk.add_argument("--trials", type=int, default=2, help="keys per length and depth")
    pk.add_argument("--filler", default="classic", help="classic ('The grass is green...'), or a text file")
    pk.add_argument("--seed", type=int, default=0)
    pk.add_argument("--key-nll", action="store_true", help=KEY_NLL_HELP)
    pk.set_defaults(fn=_cmd_eval_passkey)
    sp = eval_parser("speed", "prefill time, decode tokens/s and peak memory per prompt length", text_required=False)
    sp.add_argument("--lengths", default="4096,8192", help="prompt lengths in tokens")
    sp.add_argument("--decode-tokens", type=int, default=32, help="tokens decoded after the prompt")
    sp.set_defaults(fn=_cmd_eval_speed)
    cp = esub.add_parser(
        "compare",
        help="several pipelines side by side: one table, CSV + JSON, PNG plots (the strategy chooser)",
        formatter_class=_HelpWithDefaults,
    )
    from .eval.compare import add_arguments as compare_arguments

    compare_arguments(cp)
    cp.set_defaults(fn=_cmd_eval_compare)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "any_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        parser.error(f"--log-level: invalid level {args.log_level!r} (valid: DEBUG, INFO, WARNING, ERROR)")
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:  # under torchrun: rank 0 runs the command, the other ranks follow its engine calls (model.tp)
        return tensor_parallel.run_command(lambda: args.fn(args), _build_engine)
    except LongctxError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `longctx ... | head`: the reader went away
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0


if __name__ == "__main__":
    sys.exit(main())
