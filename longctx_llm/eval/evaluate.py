"""Measurements behind ``longctx eval``: which strategy or memory to pick, on your model and your text.

Every function takes an :class:`~longctx_llm.runtime.engine.Engine` built from a pipeline and returns rows (dicts)
that the CLI prints as a table or as ``{"results": [...]}``:

- :func:`perplexity`, :func:`stream`: perplexity of a text under the pipeline's strategy, with tokens/s and peak
  memory;
- :func:`gap`: the perplexity of ``target`` tokens that follow ``context`` tokens of text (a) with no context, (b)
  under the pipeline, (c) under plain attention when the context fits the model's window, and the share of the gap
  closed, (a - b) / (a - c);
- :func:`recall`: teacher-forced token accuracy of reproducing a span of the context from a cue, after
  :data:`RECALL_INSTRUCTION`;
- :func:`passkey`: greedy retrieval of a 5-digit key hidden at depths of filler text;
- :func:`speed`: prefill seconds, decode tokens/s at that context, peak memory.

A pipeline with a memory plugin other than the text ``buffer`` (CCM) receives the context as consecutive turns of
``turn_tokens`` tokens through one session (:meth:`~longctx_llm.runtime.engine.Engine.extend`), so a compressing memory
compresses it; otherwise the context is one prefix under the pipeline's strategy. Targets are scored from their
second token on, so every prediction has the same inputs in (a), (b) and (c): with no context, the first target
token has nothing to be predicted from. Lengths a pipeline cannot take are rows with ``"error"`` naming the reason.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import resource
import sys
import time
from typing import Any, Optional, Sequence

import torch

from ..errors import InputError, LongctxError
from ..runtime.progress import progress_bar

#: the words between a context and the cue of a recall sample (adapter trainers use the same words)
RECALL_INSTRUCTION = "\n\nCopy the passage above, starting from these words:\n"

PASSKEY_HEADER = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there.\n"
)
PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
PASSKEY_NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
PASSKEY_QUESTION = "\nWhat is the pass key? The pass key is"


# ---- memory and time ------------------------------------------------------------------------------------------


def _rss_peak_mib() -> float:
    """Peak resident set of this process (Linux: since the last reset), in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _reset_rss_peak() -> None:
    try:  # Linux: writing 5 resets the peak resident set (VmHWM) to the current one
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Peak:
    """Peak memory of a block: the CUDA allocator's peak on a GPU, the process's resident set on a CPU."""

    def __init__(self, device: torch.device):
        self.device, self.mib = device, 0.0

    def __enter__(self) -> "Peak":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_rss_peak()
        return self

    def __exit__(self, *exc) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.mib = _rss_peak_mib()
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- text -----------------------------------------------------------------------------------------------------


def spans(ids: Sequence[int], length: int, count: int, seed: int = 0) -> list[list[int]]:
    """``count`` spans of ``length`` tokens: evenly spaced over the text (not overlapping when it is long enough),
    shifted by a seeded random offset so that different seeds see different text."""
    n = len(ids)
    if length > n:
        raise InputError(
            f"--context/--target: a sample needs {length} tokens but the text has only {n}; give a longer --text"
        )
    room = n - length
    if count == 1:
        starts = [random.Random(seed).randint(0, room)]
    else:
        step = room / (count - 1) if count > 1 else 0
        jitter = random.Random(seed).random() * min(step, length) if step else 0
        starts = [min(room, int(i * step + jitter)) for i in range(count)]
    return [list(ids[s : s + length]) for s in starts]


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if v is None or v <= 0:
            raise InputError(f"--{name.replace('_', '-')}: must be > 0, got {v}")


def uses_memory(engine) -> bool:
    """Whether contexts go to this pipeline as chat turns (a memory plugin other than the text buffer)."""
    return engine.memory.name != "buffer"


# ---- forwards ---------------------------------------------------------------------------------------------------


@torch.inference_mode()
def plain_logits(engine, ids: Sequence[int], chunk: int = 2048) -> torch.Tensor:
    """(T, V) logits of plain causal attention over ``ids`` (the model as trained; no strategy, no window check)."""
    from ..runtime.kv_state import KVCacheState

    loaded = engine.loaded
    state = KVCacheState(loaded, 1, prefill_chunk_size=chunk)
    return state.forward(torch.tensor([list(ids)], device=loaded.device), all_logits=True)[0].float()


@torch.inference_mode()
def pipeline_logits(engine, context: Sequence[int], query: Sequence[int], turn_tokens: int) -> torch.Tensor:
    """(len(query), V) logits of ``query`` read after ``context`` under the pipeline (turns through a session for
    a memory pipeline; one prefix under the strategy otherwise)."""
    return pipeline_read(engine, context, query, turn_tokens)[0]


@torch.inference_mode()
def pipeline_read(engine, context: Sequence[int], query: Sequence[int], turn_tokens: int) -> tuple[torch.Tensor, int]:
    """:func:`pipeline_logits` and the positions the pipeline kept for the context: what its state holds once the
    query is read, less the query (a compressing pipeline keeps fewer than ``len(context)``)."""
    loaded = engine.loaded
    if uses_memory(engine):
        sid = f"eval-{os.getpid()}-{time.monotonic_ns()}"
        try:
            for s in range(0, len(context), turn_tokens):
                engine.extend(sid, context[s : s + turn_tokens], end_turn=True)
            logits = engine.extend(sid, query, end_turn=False, all_logits=True)[0].float()
            state = engine.session(sid).state
            return logits, max(0, min(len(context), state.cache_entries - len(query)))
        finally:
            engine.reset_session(sid)
    engine.check_fits(len(context) + len(query))
    state = engine.strategy.new_state(loaded, 1)
    if context:
        state.forward(torch.tensor([list(context)], device=loaded.device))
    logits = state.forward(torch.tensor([list(query)], device=loaded.device), all_logits=True)[0].float()
    return logits, max(0, min(len(context), state.cache_entries - len(query)))


def _nll(logits: torch.Tensor, target: Sequence[int], first: int = 1) -> torch.Tensor:
    """NLL of target tokens ``first..`` from logits (T, V) of the target's own positions."""
    t = torch.tensor(list(target), device=logits.device)
    return torch.nn.functional.cross_entropy(logits[first - 1 : -1], t[first:], reduction="none").cpu()


def _hits(logits: torch.Tensor, target: Sequence[int], first: int) -> torch.Tensor:
    t = torch.tensor(list(target), device=logits.device)
    return (logits[first - 1 : -1].argmax(-1) == t[first:]).float().cpu()


def _fits_plain(engine, n: int) -> bool:
    L = engine.loaded.info.pretraining_length
    return not L or n <= L


# ---- perplexity ---------------------------------------------------------------------------------------------------


def perplexity(engine, ids: Sequence[int], lengths: Sequence[int], *,
               same_tokens: bool = False) -> list[dict[str, Any]]:
    """Perplexity of the first N tokens of the text, per length N; with ``same_tokens``, of the same tokens at
    every length (:func:`perplexity_same_tokens`)."""
    if same_tokens:
        return perplexity_same_tokens(engine, ids, lengths)
    rows = []
    device = engine.loaded.device
    for n in lengths:
        if n > len(ids):
            raise InputError(f"--lengths: {n} exceeds the {len(ids)} tokens of the text")
        with Peak(device) as peak:
            t0 = time.perf_counter()
            nll = engine.score(ids[:n])
            _sync(device)
            dt = time.perf_counter() - t0
        rows.append({
            "strategy": engine.strategy.name, "length": n, "ppl": round(math.exp(nll.mean().item()), 4),
            "tokens_per_s": round(n / dt, 1), "peak_memory_mib": round(peak.mib, 1),
        })
    return rows


def perplexity_same_tokens(engine, ids: Sequence[int], lengths: Sequence[int]) -> list[dict[str, Any]]:
    """Perplexity of the same tokens at every length, so that only the context changes between lengths.

    The first max(lengths) tokens are cut into consecutive windows of N tokens for each length N, and every window
    is scored from scratch (a token's context is the tokens before it in its window). The perplexity is over the
    tokens that start no window at any length: the same token set at every length.
    """
    m = max(lengths)
    if m > len(ids):
        raise InputError(f"--lengths: {m} exceeds the {len(ids)} tokens of the text")
    stretch = torch.as_tensor(list(ids[:m]), dtype=torch.long)
    pos = torch.arange(m)
    common = torch.ones(m, dtype=torch.bool)
    for n in lengths:
        _check_positive(length=n)
        common &= pos % n != 0
    device = engine.loaded.device
    rows = []
    for n in lengths:
        row: dict[str, Any] = {"strategy": engine.strategy.name, "length": n, "windows": math.ceil(m / n),
                               "scored_tokens": int(common.sum())}
        nll = torch.full((m,), float("nan"))
        try:
            with Peak(device) as peak:
                t0 = time.perf_counter()
                for start in range(0, m - 1, n):
                    window = stretch[start : start + n]
                    nll[start + 1 : start + window.numel()] = engine.score(window, chunk_size=min(n, 4096))
                _sync(device)
                dt = time.perf_counter() - t0
        except LongctxError as e:
            rows.append({**row, "error": str(e)})
            continue
        row.update({"ppl": round(math.exp(nll[common].double().mean().item()), 4), "tokens_per_s": round(m / dt, 1),
                    "peak_memory_mib": round(peak.mib, 1)})
        rows.append(row)
    return rows


def stream(engine, ids: Sequence[int], tokens: int, every: int) -> list[dict[str, Any]]:
    """Stream ``tokens`` tokens through the strategy; perplexity of each ``every``-token segment (one pass)."""
    _check_positive(tokens=tokens, every=every)
    if tokens < 2:
        raise InputError(f"--tokens: must be >= 2, got {tokens}")
    if tokens > len(ids):
        raise InputError(f"--tokens: {tokens} exceeds the {len(ids)} tokens of the text")
    device = engine.loaded.device
    with Peak(device) as peak:
        t0 = time.perf_counter()
        nll = engine.score(ids[:tokens], chunk_size=_stream_piece(engine, every))
        _sync(device)
        dt = time.perf_counter() - t0
    rows = segment_perplexity(nll, every)
    for r in rows:
        r["tokens_per_s"] = round(tokens / dt, 1)
        r["peak_memory_mib"] = round(peak.mib, 1)
    return rows


def segment_perplexity(nll, every: int) -> list[dict]:
    """Perplexity of each successive ``every``-token segment of per-token NLLs (n-1,) of an n-token text.

    ``tokens_seen`` is the number of text tokens streamed when the segment ends (NLL i predicts token i + 1).
    """
    if every <= 0:
        raise InputError(f"--every: must be > 0, got {every}")
    out = []
    for start in range(0, len(nll), every):
        seg = nll[start : start + every]
        out.append({"tokens_seen": start + len(seg) + 1, "ppl": round(math.exp(float(seg.mean())), 4)})
    return out


def _stream_piece(engine, every: int) -> int:
    """Tokens scored per forward: the strategy's own prefill piece when it has one (so its fast path, e.g.
    StreamingLLM's CUDA graphs, replays), else min(every, 4096)."""
    piece = getattr(engine.strategy.options, "prefill_chunk_size", None) or getattr(engine.strategy.options, "piece", None)
    return int(piece) if piece else min(every, 4096)


# ---- gap and recall -----------------------------------------------------------------------------------------------


def gap(engine, ids: Sequence[int], contexts: Sequence[int], target: int, samples: int, *, turn_tokens: int = 128,
        seed: int = 0, recent_multiples: Sequence[int] = (1,)) -> list[dict[str, Any]]:
    """How much of the context the pipeline uses: perplexity of the target with none / pipeline / full context.

    A pipeline that keeps fewer positions than the context (a compressor, an evicting cache) is also compared with
    the trivial thing at the same cost: ``recent``, the target read after only the last k raw tokens of the context,
    k the positions the pipeline kept (``recent_tokens``); ``recent_multiples`` m > 1 add ``ppl_recent_x{m}``, the
    last m·k tokens (is a kept position worth m raw tokens?). ``gap_closed`` is the share of the perplexity gap
    between no context and the full context that a reading closes; ``gap_closed_nats`` the same share in
    log-perplexity.
    """
    multiples = sorted({int(m) for m in recent_multiples})
    if not multiples or multiples[0] < 1:
        raise InputError(f"--recent-multiples: positive integers, e.g. 1,4; got {list(recent_multiples)}")
    _check_positive(target=target, samples=samples, turn_tokens=turn_tokens)
    if target < 2:
        raise InputError(f"--target: need at least 2 tokens, got {target}")
    rows = []
    for C in contexts:
        _check_positive(context=C)
        row: dict[str, Any] = {"context_tokens": C, "target_tokens": target, "samples": samples}
        if uses_memory(engine):
            row["turn_tokens"] = turn_tokens
        data = spans(ids, C + target, samples, seed)  # a context longer than the text is a bad argument: raise
        try:
            nll = {"none": [], "pipeline": [], "full": [], **{_recent_key(m): [] for m in multiples}}
            kept: list[int] = []
            full_ok = _fits_plain(engine, C + target)
            with progress_bar(total=samples, desc=f"gap {C}", unit="sample", enabled=samples > 1) as bar:
                for s in data:
                    ctx, tgt = s[:C], s[C:]
                    nll["none"].append(_nll(plain_logits(engine, tgt), tgt))
                    logits, k = pipeline_read(engine, ctx, tgt, turn_tokens)
                    nll["pipeline"].append(_nll(logits, tgt))
                    kept.append(k)
                    if full_ok:
                        nll["full"].append(_nll(plain_logits(engine, s)[C:], tgt))
                    if k < C:
                        for m in multiples:
                            r = min(C, m * k)
                            nll[_recent_key(m)].append(_nll(plain_logits(engine, s[C - r :])[r:], tgt))
                    bar.update(1)
        except LongctxError as e:
            rows.append({**row, "error": str(e)})
            continue
        recent = [_recent_key(m) for m in multiples]
        if any(len(nll[key]) != len(data) for key in recent):
            for key in recent:
                nll[key] = []  # kept everything (or not always less): no same-cost baseline
        mean = {k: (torch.cat(v).mean().item() if v else None) for k, v in nll.items()}  # mean NLL (nats)
        ppl = {k: (math.exp(v) if v is not None else None) for k, v in mean.items()}

        def closed(key: str, logs: bool) -> Optional[float]:
            f = (lambda k: mean[k]) if logs else (lambda k: ppl[k])
            if ppl["full"] is None or ppl[key] is None or f("none") == f("full"):
                return None
            return round((f("none") - f(key)) / (f("none") - f("full")), 4)

        row.update({
            "ppl_none": round(ppl["none"], 4), "ppl_pipeline": round(ppl["pipeline"], 4),
            "ppl_full": round(ppl["full"], 4) if ppl["full"] is not None else None,
            "gap_closed": closed("pipeline", False), "gap_closed_nats": closed("pipeline", True),
        })
        if nll[recent[0]]:
            row["recent_tokens"] = round(sum(kept) / len(kept), 1)
            for key in recent:
                row.update({f"ppl_{key}": round(ppl[key], 4), f"gap_closed_{key}": closed(key, False),
                            f"gap_closed_{key}_nats": closed(key, True)})
        rows.append(row)
    return rows


def _recent_key(multiple: int) -> str:
    return "recent" if multiple == 1 else f"recent_x{multiple}"


def recall(engine, ids: Sequence[int], contexts: Sequence[int], span: int, cue: int, samples: int, *,
           turn_tokens: int = 128, seed: int = 0) -> list[dict[str, Any]]:
    """Teacher-forced accuracy of reproducing ``span`` tokens of the context that follow a ``cue``-token cue."""
    _check_positive(span=span, cue=cue, samples=samples, turn_tokens=turn_tokens)
    instr = engine.tokenize(RECALL_INSTRUCTION, add_special_tokens=False)
    # a strategy that keeps its last tokens raw (RCC's raw_tail) would show the span's first tokens the raw context:
    # the cue grows until the token that predicts the span's first is past that tail. A memory that keeps the end of
    # the compressed turns raw (CCM's raw_tail) holds the context's last tokens whatever follows: spans are drawn
    # before them. So every scored token reads the context compressed (RCC: a context of whole windows; a partial
    # window's text is never compressed)
    cue = max(cue, engine.strategy.raw_tail() + 1 - len(instr))
    held_raw = engine.memory.raw_tail() if uses_memory(engine) else 0
    rng = random.Random(seed)
    rows = []
    for C in contexts:
        _check_positive(context=C)
        row: dict[str, Any] = {"context_tokens": C, "span": span, "cue": cue, "samples": samples}
        if cue + span + held_raw > C:
            rows.append({**row, "error": f"--cue + --span = {cue + span} exceeds the context of {C} tokens"
                         + (f" less the memory's raw tail of {held_raw}" if held_raw else "")})
            continue
        data = spans(ids, C, samples, seed)
        try:
            hits = {"none": [], "pipeline": [], "full": []}
            first = len(instr) + cue
            full_ok = _fits_plain(engine, C + first + span)
            with progress_bar(total=samples, desc=f"recall {C}", unit="sample", enabled=samples > 1) as bar:
                for ctx in data:
                    at = rng.randint(0, C - cue - span - held_raw)
                    query = instr + ctx[at : at + cue + span]
                    hits["none"].append(_hits(plain_logits(engine, query), query, first))
                    hits["pipeline"].append(_hits(pipeline_logits(engine, ctx, query, turn_tokens), query, first))
                    if full_ok:
                        hits["full"].append(_hits(plain_logits(engine, ctx + query)[C:], query, first))
                    bar.update(1)
        except LongctxError as e:
            rows.append({**row, "error": str(e)})
            continue
        acc = {k: (round(torch.cat(v).mean().item(), 4) if v else None) for k, v in hits.items()}
        row.update({"acc_none": acc["none"], "acc_pipeline": acc["pipeline"], "acc_full": acc["full"]})
        rows.append(row)
    return rows


# ---- passkey ------------------------------------------------------------------------------------------------------


# ---- chat -------------------------------------------------------------------------------------------------------

#: what documentation markup looks like in a reply that should be plain conversation (reStructuredText / Sphinx,
#: doctest prompts, POD, man-page headings, underlined titles): the style a memory trained on docs can leak
DOCS_MARKUP = re.compile(
    r"(^|\s)\.\. [a-z-]+::|:(meth|func|class|data|attr|mod|ref|term|exc|const|option|envvar|c:func|py:\w+):`"
    r"|``[^`]+``|^\s*>>> |^=(head\d|item|over|back|cut)\b|\b[CBILF]<[^>]+>|^(NAME|SYNOPSIS|DESCRIPTION|OPTIONS)\s*$"
    r"|^\s*(={3,}|-{3,}|~{3,}|\^{3,})\s*$",
    re.MULTILINE,
)


def docs_markup(text: str) -> Optional[str]:
    """The first piece of documentation markup in ``text``, or None."""
    m = DOCS_MARKUP.search(text)
    return m.group(0).strip() if m else None


def default_chats() -> list[dict[str, Any]]:
    from importlib import resources

    return json.loads(resources.files("longctx_llm").joinpath("data/fact_chats.json").read_text())["chats"]


def read_chats(path: Optional[str]) -> list[dict[str, Any]]:
    """Chats for :func:`chat_facts`: ``path`` (JSON, ``{"chats": [{"turns": [...], "answer": [...]}]}``) or the
    shipped set."""
    if path is None:
        return default_chats()
    try:
        doc = json.loads(open(path, encoding="utf-8").read())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--chats: cannot read {path!r}: {e}") from e
    chats = doc.get("chats") if isinstance(doc, dict) else None
    ok = isinstance(chats, list) and chats and all(
        isinstance(c, dict) and isinstance(c.get("turns"), list) and c["turns"]
        and all(isinstance(t, str) and t.strip() for t in c["turns"])
        and isinstance(c.get("answer"), list) and c["answer"] and all(isinstance(a, str) and a for a in c["answer"])
        for c in chats
    )
    if not ok:
        raise InputError(
            f"--chats {path!r}: expected {{\"chats\": [{{\"turns\": [\"user turn\", ...], \"answer\": [\"word\", ...]}}, ...]}}"
        )
    return chats


def chat_facts(engine, chats: list[dict[str, Any]], max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Multi-turn chats through the pipeline's memory (greedy replies): how often the last reply holds the fact
    stated earlier (``fact_rate``), and how often a reply is written as documentation (``markup_rate``)."""
    _check_positive(max_new_tokens=max_new_tokens)
    facts, marked, replies = 0, 0, []
    with progress_bar(total=len(chats), desc="chat", unit="chat", enabled=len(chats) > 1) as bar:
        for i, c in enumerate(chats):
            sid = f"eval-chat-{os.getpid()}-{i}-{time.monotonic_ns()}"
            texts = []
            try:
                for turn in c["turns"]:
                    texts.append(engine.chat(turn, session_id=sid, max_new_tokens=max_new_tokens,
                                             temperature=0.0).text)
            finally:
                engine.reset_session(sid)
            hit = any(a.lower() in texts[-1].lower() for a in c["answer"])
            markup = next((m for m in map(docs_markup, texts) if m), None)
            facts += hit
            marked += markup is not None
            replies.append({"question": c["turns"][-1], "reply": texts[-1], "fact": hit, "markup": markup})
            bar.update(1)
    return [{
        "memory": engine.memory.name, "chats": len(chats), "fact_rate": round(facts / len(chats), 4),
        "markup_rate": round(marked / len(chats), 4), "replies": replies,
    }]


def passkey_prompt(engine, n: int, depth: float, key: str, filler_ids: Optional[list[int]] = None) -> list[int]:
    """Token ids of a prompt of about ``n`` tokens with the key at ``depth`` (0..1) of the filler.

    Classic filler (``filler_ids`` None): the header, then "The grass is green. ..." repeated (Landmark Attention,
    DCA §4.3). Otherwise the given text, repeated as needed. The prompt ends "The pass key is".
    """
    tok = lambda t: engine.tokenize(t, add_special_tokens=False)  # noqa: E731
    needle = tok(PASSKEY_NEEDLE.format(key=key))
    question = tok(PASSKEY_QUESTION)
    head = tok(PASSKEY_HEADER) if filler_ids is None else []
    budget = n - len(head) - len(needle) - len(question)
    if budget < 0:
        raise InputError(f"--lengths: {n} tokens cannot hold the pass-key prompt (at least {n - budget} tokens)")
    unit = filler_ids if filler_ids is not None else tok(" " + PASSKEY_FILLER)
    body = (unit * (budget // max(1, len(unit)) + 1))[:budget]
    at = int(budget * depth)
    return head + body[:at] + needle + body[at:] + question


def passkey(engine, lengths: Sequence[int], depths: Sequence[float], trials: int, *,
            filler_ids: Optional[list[int]] = None, new_tokens: int = 8, seed: int = 0,
            key_nll: bool = False) -> list[dict[str, Any]]:
    """Greedy retrieval of a key per (length, depth, trial); ``key_nll`` also scores the key teacher-forced after
    the prompt: the mean NLL per key token, a graded figure beside the all-or-nothing answer (one more prefill)."""
    _check_positive(trials=trials, new_tokens=new_tokens)
    rng = random.Random(seed)
    rows = []
    for n in lengths:
        _check_positive(length=n)
        keys = [(d, str(rng.randint(10000, 99999))) for d in depths for _ in range(trials)]
        by_depth: dict[str, list[int]] = {}
        nlls: list[float] = []
        try:
            with progress_bar(total=len(keys), desc=f"passkey {n}", unit="trial", enabled=True) as bar:
                for d, key in keys:
                    ids = passkey_prompt(engine, n, d, key, filler_ids)
                    engine.check_fits(len(ids) + new_tokens)
                    text = engine.complete_ids(ids, max_new_tokens=new_tokens).text
                    by_depth.setdefault(f"{round(d * 100)}%", []).append(int(key in text))
                    if key_nll:
                        key_ids = engine.tokenize(" " + key, add_special_tokens=False)
                        nlls.append(engine.score(ids + key_ids, chunk_size=4096)[-len(key_ids) :].mean().item())
                    bar.update(1)
        except LongctxError as e:
            rows.append({"length": n, "error": str(e)})
            continue
        allhits = [h for v in by_depth.values() for h in v]
        rows.append({
            "length": n, "accuracy": round(sum(allhits) / len(allhits), 4), "trials": len(allhits),
            **({"key_nll": round(sum(nlls) / len(nlls), 4)} if nlls else {}),
            "by_depth": {k: round(sum(v) / len(v), 4) for k, v in by_depth.items()},
        })
    return rows


def _state_bytes(state) -> int:
    """Bytes of what a strategy state keeps between forwards (its cache: keys/values, slots), via its state_dict."""
    try:
        tensors, _ = state.state_dict()
    except LongctxError:
        return 0
    return sum(t.numel() * t.element_size() for t in tensors.values() if t.is_floating_point())


# ---- speed --------------------------------------------------------------------------------------------------------


@torch.inference_mode()
def speed(engine, ids: Sequence[int], lengths: Sequence[int], *, decode_tokens: int = 32) -> list[dict[str, Any]]:
    """Prefill seconds, decode tokens/s at that context and peak memory, per prompt length."""
    _check_positive(decode_tokens=decode_tokens)
    loaded = engine.loaded
    device = loaded.device
    rows = []
    for n in lengths:
        _check_positive(length=n)
        row: dict[str, Any] = {"strategy": engine.strategy.name, "length": n}
        try:
            engine.check_fits(n + decode_tokens)
            prompt = (list(ids) * (n // max(1, len(ids)) + 1))[:n]
            with Peak(device) as peak:
                state = engine.strategy.new_state(loaded, 1)
                state.reserve(n + decode_tokens)  # as the generation loop does: a preallocated cache sized once
                _sync(device)
                t0 = time.perf_counter()
                logits = state.forward(torch.tensor([prompt], device=device))
                _sync(device)
                t1 = time.perf_counter()
                tok = logits[:, -1].argmax(-1, keepdim=True)
                for _ in range(decode_tokens):
                    tok = state.forward(tok)[:, -1].argmax(-1, keepdim=True)
                _sync(device)
                t2 = time.perf_counter()
            cache = _state_bytes(state)  # outside the timed regions
            del state
        except LongctxError as e:
            rows.append({**row, "error": str(e)})
            continue
        except torch.OutOfMemoryError as e:  # report it as a row; the next length may still fit
            rows.append({**row, "error": f"out of memory: {str(e).splitlines()[0]}"})
            continue
        row.update({
            "prefill_s": round(t1 - t0, 4), "prefill_tokens_per_s": round(n / (t1 - t0), 1),
            "decode_tokens_per_s": round(decode_tokens / (t2 - t1), 2), "peak_memory_mib": round(peak.mib, 1),
            "cache_mib": round(cache / 2**20, 2),
        })
        rows.append(row)
    return rows
