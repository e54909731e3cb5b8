"""``longctx train ccm``: train a CCM adapter (COMP embeddings + conditional LoRA) for a model.

Self-supervised on plain text (REFERENCE §3: "compress earlier segments, predict the next"): each sample is N
consecutive segments of the text; the parallel forward (``parallel.py``) compresses segments 0..N-2 into COMP slots
and the loss is the next-token loss of segments 1..N-1, each read through the memory of the earlier ones. One
adapter serves several slot counts and both modes: each step draws its layout (slots per turn from
``--comp-tokens``, the mode from ``--modes``, the segment length) and every row of the batch shares it.

Held-out figures (every 10th document, never trained on) go into the adapter card: the perplexity of the last
segment with no context, through the compressed memory, and with the full text, and the share of the gap closed.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from longctx_llm.errors import InputError
from longctx_llm.train import distill, training

from .adapter import CCMAdapter
from .parallel import Layout, distilled_loss, parallel_hidden, segment_nll
from .samples import SampleMaker

logger = logging.getLogger("longctx_llm.train")


def _ints(text: str, what: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise InputError(f"{what}: expected comma-separated integers, got {text!r}") from e
    if not out or any(v <= 0 for v in out):
        raise InputError(f"{what}: expected positive integers, got {text!r}")
    return out


@torch.no_grad()
def heldout_gap(model, adapter: CCMAdapter, stream, *, segments: int, seg_len: int, k: int, mode: str,
                samples: int, batch: int = 16, kind: str = "text", maker=None) -> dict[str, float]:
    """Perplexity of the last segment's tokens 1.. with no context / the compressed memory / the full text."""
    device = next(model.parameters()).device
    if kind == "text":
        data = stream.fixed(samples, segments * seg_len).to(device)
        lens = (seg_len,) * segments
    else:
        data, lens = maker.batch(kind, samples, seg_len, segments, torch.Generator().manual_seed(1234))
        data = data.to(device)
    layout = Layout(lens, k, mode, device=device)
    last = segments - 1
    start = sum(lens[:last])
    nll = {"none": [], "ccm": [], "full": []}
    was = adapter.training
    adapter.eval()
    for i in range(0, samples, batch):
        ids = data[i : i + batch]
        hidden = parallel_hidden(model, adapter, ids, layout)
        nll["ccm"].append(segment_nll(model, hidden, ids, layout, [last]).flatten())
        tgt = ids[:, start:]
        logits = model(input_ids=tgt).logits[:, :-1].float()
        nll["none"].append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], reduction="none").flatten())
        logits = model(input_ids=ids).logits[:, start:-1].float()
        nll["full"].append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt[:, 1:], reduction="none").flatten())
    adapter.train(was)
    ppl = {k2: math.exp(torch.cat(v).mean().item()) for k2, v in nll.items()}
    gap = (ppl["none"] - ppl["ccm"]) / (ppl["none"] - ppl["full"]) if ppl["none"] != ppl["full"] else float("nan")
    return {"ppl_none": round(ppl["none"], 4), "ppl_ccm": round(ppl["ccm"], 4), "ppl_full": round(ppl["full"], 4),
            "gap_closed": round(gap, 4)}


def _heldout_figures(model, adapter, stream, tokenizer, args, modes, ks, seg) -> dict[str, Any]:
    """The card's held-out figures: the gap closed per mode and slot count, and on chat and fact samples."""
    figures: dict[str, Any] = {}
    for mode in modes:
        for k in ks:
            figures[f"{mode}_k{k}"] = heldout_gap(
                model, adapter, stream, segments=args.segments, seg_len=seg, k=k, mode=mode, samples=args.eval_samples,
            )
    held_maker = SampleMaker(stream, tokenizer, seed=1)
    for kind, share in (("chat", args.chat_share), ("fact", args.fact_share)):
        if share > 0:
            k = 2 if 2 in ks else ks[0]
            figures[f"{kind}_{modes[0]}_k{k}"] = heldout_gap(
                model, adapter, stream, segments=args.segments, seg_len=seg, k=k, mode=modes[0],
                samples=args.eval_samples, kind=kind, maker=held_maker,
            )
    return figures


class CCMTrainer:
    """`longctx train ccm`: COMP embeddings and a conditional LoRA for a model, self-supervised on your text."""

    name = "ccm"
    help = "train a CCM adapter (compressed chat memory) for a model"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        training.add_common_arguments(p)
        p.add_argument("--steps", type=int, default=2000, help="optimizer steps (default: %(default)s)")
        p.add_argument("--batch", type=int, default=32, help="samples per step (default: %(default)s)")
        p.add_argument("--segments", type=int, default=5, help="segments per sample; all but the last are compressed")
        p.add_argument("--seg-len", default="128", help="segment lengths to draw from, e.g. 64,128,192 (default: 128)")
        p.add_argument("--comp-tokens", default="2", help="slot counts per turn to train, e.g. 1,2,4,8 (default: 2)")
        p.add_argument("--comp-weights", default=None, help="sampling weights of --comp-tokens (default: equal)")
        p.add_argument("--modes", default="concat", help="concat, merge or concat,merge (default: %(default)s)")
        p.add_argument("--merge-share", type=float, default=0.3, help="share of merge steps when both modes train")
        p.add_argument("--chat-share", type=float, default=0.0, help="share of steps on text wrapped in chat turns")
        p.add_argument("--fact-share", type=float, default=0.0,
                       help="share of steps on dialogues whose last turn needs a fact from the first")
        distill.add_argument(p)
        p.add_argument("--distill-kinds", default="text,chat,fact",
                       help="the sample kinds --distill applies to (text, chat, fact; default: %(default)s): e.g. chat,fact "
                            "keeps plain text on the next-token loss and teaches the chat turns the model's own register")
        p.add_argument("--rank", type=int, default=16, help="LoRA rank (default: %(default)s)")
        p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
        p.add_argument("--targets", default="attention", help="LoRA targets: attention, mlp or both (default: %(default)s)")
        p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default: %(default)s)")
        p.add_argument("--warmup", type=int, default=100)
        p.add_argument("--eval-samples", type=int, default=256, help="held-out samples for the card's figures")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from longctx_llm import ModelHandle

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        if not modes or any(m not in ("concat", "merge") for m in modes):
            raise InputError(f"--modes: expected concat, merge or concat,merge, got {args.modes!r}")
        ks = _ints(args.comp_tokens, "--comp-tokens")
        weights = [float(w) for w in args.comp_weights.split(",")] if args.comp_weights else [1.0] * len(ks)
        if len(weights) != len(ks):
            raise InputError("--comp-weights: give one weight per --comp-tokens value")
        seg_lens = _ints(args.seg_len, "--seg-len")
        if args.segments < 2:
            raise InputError(f"--segments: need at least 2, got {args.segments}")
        if args.steps <= 0 or args.batch <= 0:
            raise InputError("--steps and --batch must be positive")
        if not (0 <= args.chat_share and 0 <= args.fact_share and args.chat_share + args.fact_share <= 1):
            raise InputError(
                f"--chat-share {args.chat_share} and --fact-share {args.fact_share}: each at least 0, together at most 1"
            )
        distill.check(args.distill)
        distill_kinds = {k.strip() for k in args.distill_kinds.split(",") if k.strip()}
        if not distill_kinds or not distill_kinds <= {"text", "chat", "fact"}:
            raise InputError(f"--distill-kinds: expected some of text, chat, fact, got {args.distill_kinds!r}")
        targets = ["attention", "mlp"] if args.targets == "both" else [t.strip() for t in args.targets.split(",")]

        training.check_out(args.out)  # a file or a foreign folder is refused before any work
        sources = training.read_data(args)  # bad data is refused before the model loads
        loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
        model, device = loaded.model, loaded.device
        model.requires_grad_(False)
        corpus = training.tokenize_data(sources, loaded.tokenizer)
        train_stream, held_stream, data_info = corpus.train, corpus.heldout, corpus.info
        torch.manual_seed(training.stable_seed(args.seed, "init"))  # the initial weights follow --seed
        adapter = CCMAdapter(
            model, n_comp=max(ks), rank=args.rank, alpha=args.alpha or float(args.rank), dropout=0.0,
            projections=targets, modes=modes, comp_tokens=ks,
        ).to(device)
        params = dict(adapter.named_parameters())
        opt = torch.optim.AdamW(params.values(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
        out = Path(args.out).expanduser()
        ckpt = training.Checkpoint(out)
        start, meta = 0, {}
        if ckpt.exists() and not args.no_resume:
            start, meta = ckpt.load(params, opt)
            logger.warning("resuming from %s at step %d", ckpt.path, start)
        elif args.init:
            init = CCMAdapter.load(args.init, model, loaded.fingerprint)
            with torch.no_grad():
                for k, v in init.named_parameters():
                    params[k].copy_(v.to(params[k].dtype))
            start = int((init.card.get("training") or {}).get("steps", 0))
            meta = {"tokens": (init.card.get("training") or {}).get("tokens", 0),
                    "wall_time_s": (init.card.get("training") or {}).get("wall_time_s", 0.0)}
            meta["warm_from"] = start  # a fresh optimizer warms up again
            logger.warning("starting from the weights of %s (step %d), fresh optimizer", args.init, start)
        wall = float(meta.get("wall_time_s", 0.0))
        warm_from = int(meta.get("warm_from", 0))
        tokens_seen = int(meta.get("tokens", 0))

        maker = SampleMaker(train_stream, loaded.tokenizer, seed=training.stable_seed(args.seed, "samples", start))
        autocast = training.autocast(device)
        bar = training.Progress(args.steps, start, "train ccm")
        adapter.train()
        t0 = time.perf_counter()
        budget = training.Budget(args.steps, args.time_budget, start)
        step = done = start
        try:
            for step in range(start + 1, args.steps + 1):
                rng, gen = training.step_random(args.seed, step)
                maker.rng = random.Random(training.stable_seed(args.seed, "samples", step))
                k = rng.choices(ks, weights)[0]
                mode = "merge" if len(modes) == 2 and rng.random() < args.merge_share else modes[0]
                n = rng.choice(seg_lens)
                u = rng.random()
                kind = "fact" if u < args.fact_share else "chat" if u < args.fact_share + args.chat_share else "text"
                ids, lens = maker.batch(kind, args.batch, n, args.segments, gen)
                ids = ids.to(device)
                layout = Layout(lens, k, mode, device=device)
                for g in opt.param_groups:
                    g["lr"] = training.cosine_lr(step - 1, args.steps, args.lr, args.warmup, budget.progress(step - 1),
                                                 warm_from)
                with autocast:
                    hidden = parallel_hidden(model, adapter, ids, layout)
                    if args.distill > 0 and kind in distill_kinds:
                        loss, _, _ = distilled_loss(model, hidden, ids, layout, range(1, args.segments), args.distill)
                    else:
                        loss = segment_nll(model, hidden, ids, layout, range(1, args.segments)).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                opt.step()
                done = step
                tokens_seen += ids.numel()
                bar.update(step, loss.item(), ids.numel())
                if budget.done(step):
                    break
                if step % args.save_every == 0:
                    meta = training.run_meta(args, tokens_seen, wall + time.perf_counter() - t0, warm_from)
                    ckpt.save(step, params, opt, meta)
        except KeyboardInterrupt:
            meta = training.run_meta(args, tokens_seen, wall + time.perf_counter() - t0, warm_from)
            training.save_interrupted(ckpt, done, params, opt, meta)
            raise
        finally:
            bar.close()
        wall += time.perf_counter() - t0
        ckpt.save(step, params, opt, training.run_meta(args, tokens_seen, wall, warm_from))

        adapter.eval()
        seg = seg_lens[0] if 128 not in seg_lens else 128
        with autocast:
            figures = _heldout_figures(model, adapter, held_stream, loaded.tokenizer, args, modes, ks, seg)
            by_source = {}
            if len(corpus.heldout_by_source) > 1:
                for label, stream in corpus.heldout_by_source.items():
                    by_source[label] = _heldout_figures(model, adapter, stream, loaded.tokenizer, args, modes, ks, seg)
        card = {
            "base_model": training.base_model_card(loaded, args.model_name),
            "data": data_info,
            "training": {
                "steps": step, "batch": args.batch, "segments": args.segments, "seg_len": seg_lens, "lr": args.lr,
                "warmup": args.warmup, "tokens": tokens_seen, "wall_time_s": round(wall, 1),
                "device": training.device_name(device), "dtype": str(loaded.dtype), **training.environment(),
                "comp_weights": weights, "merge_share": args.merge_share if len(modes) == 2 else None,
                "chat_share": args.chat_share, "fact_share": args.fact_share, "distill": args.distill,
                "distill_kinds": sorted(distill_kinds) if args.distill > 0 else None,
                "command": training.command_line("ccm", args),
            },
            "heldout": {"segments": args.segments, "seg_len": seg, "samples": args.eval_samples, **figures},
        }
        if by_source:
            card["heldout_by_source"] = by_source
        adapter.save(out, card)
        print(json.dumps({"adapter": str(out), "heldout": figures, **({"by_source": by_source} if by_source else {})},
                         indent=1))
        return 0
