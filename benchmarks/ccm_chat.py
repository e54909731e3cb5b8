"""CCM in chat: recall of a fact stated k turns earlier, and the session's key/value bytes and latency per turn.

Dialogues are rendered with the model's chat template and fed turn by turn through one engine session
(``Engine.extend``: each finished turn ends as a chat turn does, so CCM compresses it). A dialogue states a fact in
its first turn ("The code word is <word>." / a reply), then k filler turns (user lines of held-out text, fixed
replies), then asks for the fact; the answer ("The code word is <word>.") is scored teacher-forced: the token
accuracy and NLL of ``<word>``. Memories compared in one run:

- ``ccm``: the shipped adapter, concat, 2 slots per turn;
- ``none``: the question alone (no memory);
- ``full``: the whole dialogue as text (``buffer``), while it fits the model's window;
- ``buffer-matched``: ``buffer`` keeping only as many recent turns as fit in CCM's positions (2 slots per turn plus
  its ``raw_tail`` of raw tokens) worth of key/values, i.e. what a plain text memory of the same size remembers.

``--footprint`` also drives sessions of 10/50/100 turns and reports the cache's key/value bytes and the time of each
turn for ccm and full text.

    python benchmarks/ccm_chat.py --text ../shared/data/pydocs-3.11.jsonl.gz --split heldout --dialogues 20
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir, print_table, write_json  # noqa: E402

from longctx_llm import Engine, ModelHandle  # noqa: E402
from longctx_llm.errors import LongctxError  # noqa: E402
from longctx_llm.eval import split_text  # noqa: E402

WORDS = ["amber", "falcon", "harbor", "cobalt", "meadow", "lantern", "quartz", "willow", "saffron", "glacier",
         "orchid", "tundra", "velvet", "cinder", "marble", "juniper", "pepper", "summit", "thistle", "canyon"]


def render_ids(engine, messages, gen_prompt=False) -> list[int]:
    return engine.tokenize(engine.render_chat(messages, add_generation_prompt=gen_prompt), add_special_tokens=False)


def cache_bytes(state) -> int:
    from longctx_llm.model import hf_adapter

    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in hf_adapter.cache_kv(state.cache))


def dialogue(word: str, fillers: list[str]) -> tuple[list[dict], list[dict], str]:
    turns = [{"role": "user", "content": f"Please remember this. The code word is {word}."},
             {"role": "assistant", "content": f"Understood. The code word is {word}."}]
    for f in fillers:
        turns += [{"role": "user", "content": f}, {"role": "assistant", "content": "Thank you, noted."}]
    question = [{"role": "user", "content": "What is the code word?"}]
    return turns, question, f"The code word is {word}."


def score(engine, turns, question, answer) -> tuple[float, float]:
    """Feed ``turns`` (user/assistant pairs) turn by turn, then teacher-force ``answer`` after ``question``: token
    accuracy and mean NLL of the code word."""
    sid, done, prev = "d", [], []
    for i in range(0, len(turns), 2):
        done = done + turns[i : i + 2]
        ids = render_ids(engine, done)
        engine.extend(sid, ids[len(prev):], end_turn=True)
        prev = ids
    ans = engine.tokenize(answer, add_special_tokens=False)
    query = render_ids(engine, done + question, gen_prompt=True)[len(prev):] + ans
    logits = engine.extend(sid, query, end_turn=False, all_logits=True)[0].float()
    engine.reset_session(sid)
    word = engine.tokenize(" " + answer.split("is ", 1)[1].rstrip("."), add_special_tokens=False)
    start = len(query) - 1 - len(word)  # the answer ends with "."
    assert query[start : start + len(word)] == word, "the answer's tokens do not end with the word and a full stop"
    tgt = torch.tensor(query[start : start + len(word)], device=logits.device)
    lg = logits[start - 1 : start - 1 + len(word)]
    return (lg.argmax(-1) == tgt).float().mean().item(), torch.nn.functional.cross_entropy(lg, tgt).item()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--text", required=True)
    p.add_argument("--split", default="heldout", choices=("all", "heldout", "train"))
    p.add_argument("--ks", default="1,5,20", help="filler turns between the fact and the question")
    p.add_argument("--dialogues", type=int, default=20)
    p.add_argument("--filler-tokens", type=int, default=48, help="tokens of each filler user line")
    p.add_argument("--footprint", default="10,50,100", help="turns for the bytes/latency table ('' to skip)")
    p.add_argument("--adapter", default=None, help="CCM adapter directory (default: the shipped one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench-out")
    args = p.parse_args(argv)
    loaded = ModelHandle(args.model, device=args.device, dtype="float32" if args.device == "cpu" else "auto").get()
    tok = loaded.tokenizer
    ids = tok(split_text(args.text, args.split), add_special_tokens=False)["input_ids"]
    rng = random.Random(0)

    def filler() -> str:
        s = rng.randrange(0, len(ids) - args.filler_tokens)
        return tok.decode(ids[s : s + args.filler_tokens]).replace("\n", " ").strip()

    engines = {
        "ccm": Engine(loaded, memory={"name": "ccm", "comp_tokens": 2, "adapter": args.adapter}),
        "text": Engine(loaded, memory={"name": "buffer"}),
    }
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    rows = []
    for k in ks:
        res = {m: [] for m in ("ccm", "none", "full", "buffer-matched")}
        turn_tokens = None
        for d in range(args.dialogues):
            turns, question, answer = dialogue(WORDS[d % len(WORDS)], [filler() for _ in range(k)])
            n_turns = len(turns) // 2
            if turn_tokens is None:
                turn_tokens = len(render_ids(engines["text"], turns)) / n_turns
            kept = 2 * n_turns + engines["ccm"].memory.raw_tail()  # CCM's positions: slots and its raw tail
            matched = max(0, min(n_turns, math.floor(kept / turn_tokens)))
            res["ccm"].append(score(engines["ccm"], turns, question, answer))
            res["none"].append(score(engines["text"], [], question, answer))
            try:
                res["full"].append(score(engines["text"], turns, question, answer))
            except LongctxError:
                engines["text"].reset_session("d")
            res["buffer-matched"].append(score(engines["text"], turns[len(turns) - 2 * matched :] if matched else [],
                                               question, answer))
        row = {"k": k, "turn_tokens": round(turn_tokens, 1)}
        for m, v in res.items():
            row[f"{m}_acc"] = round(sum(a for a, _ in v) / len(v), 3) if v else None
            row[f"{m}_nll"] = round(sum(n for _, n in v) / len(v), 3) if v else None
        rows.append(row)
        print(row, flush=True)
    print("\nrecall of the code word (teacher-forced token accuracy / NLL), k filler turns after the fact")
    print_table(rows, ["k", "turn_tokens"] + [f"{m}_acc" for m in res] + [f"{m}_nll" for m in res])

    foot = []
    if args.footprint:
        for n in [int(x) for x in args.footprint.split(",") if x.strip()]:
            for name in ("ccm", "text"):
                e = engines[name]
                turns, _, _ = dialogue("amber", [filler() for _ in range(n - 1)])
                times, prev, done = [], [], []
                try:
                    for i in range(0, len(turns), 2):
                        done = done + turns[i : i + 2]
                        cur = render_ids(e, done)
                        t = time.perf_counter()
                        e.extend("f", cur[len(prev):], end_turn=True)
                        times.append(time.perf_counter() - t)
                        prev = cur
                    state = e.session("f").state
                    foot.append({
                        "memory": name, "turns": n, "text_tokens": len(prev), "cache_entries": state.seen,
                        "kv_bytes": cache_bytes(state), "first_10_turns_ms": round(1000 * sum(times[:10]) / len(times[:10]), 1),
                        "last_10_turns_ms": round(1000 * sum(times[-10:]) / len(times[-10:]), 1),
                    })
                except LongctxError as err:
                    foot.append({"memory": name, "turns": n, "text_tokens": len(prev), "error": str(err)[:80]})
                e.reset_session("f")
                print(foot[-1], flush=True)
        print("\nsession footprint: key/value bytes and time per turn")
        print_table(foot, ["memory", "turns", "text_tokens", "cache_entries", "kv_bytes", "first_10_turns_ms",
                           "last_10_turns_ms", "error"])
    out = out_dir(args.out)
    write_json(out, "ccm_chat.json", {"recall": rows, "footprint": foot, "args": vars(args),
                                      "date": time.strftime("%Y-%m-%d"), "device": str(loaded.device)})
    print(json.dumps({"recall": rows, "footprint": foot}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
