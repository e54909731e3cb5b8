"""``longctx train rcc``: train an RCC compressor (encoder LoRA or full encoder, bridges, slot LoRA) for a model.

Self-supervised on plain text, two objectives alternating step by step (REFERENCE §4: reconstruct a span of the
compressed context from a short cue; the paper's continuation pre-training):

- **continuation**: ``windows`` windows of context are compressed; the decoder reads their slots and predicts the
  next ``--continuation`` tokens (loss on all of them);
- **reconstruction**: the decoder reads the slots, then :data:`longctx_llm.eval.evaluate.RECALL_INSTRUCTION`, then a
  ``--cue``-token cue taken from the context, and must reproduce the ``--span`` tokens that follow the cue in the
  context (loss on the span).

The training forward is the inference path in one pass: the encoder pass (``RCCCompressor.encode``) and the
decoder pass over ``[slots][text]`` with the same hooks, causal attention and positions as ``RCCState`` uses with
its cache. Held-out figures (every 10th document) go into the card: the gap closed on the next 128 tokens after one
window, and the token accuracy of the reconstruction.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import torch

from longctx_llm.errors import InputError
from longctx_llm.eval import RECALL_INSTRUCTION
from longctx_llm.model import hf_adapter
from longctx_llm.train import distill, training

from .compressor import RCCCompressor

logger = logging.getLogger("longctx_llm.train")


def decoder_pass(model, comp: RCCCompressor, states: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Final hidden states (B, P + T, H) of ``[slots][text]``: slots from ``states`` (B, P, L+1, H), text (B, T)."""
    B, P = states.shape[:2]
    emb = hf_adapter.input_embeddings(model)(text)
    inputs = torch.cat([comp.slot_inputs(states, emb.dtype), emb], dim=1)
    pos = torch.arange(inputs.shape[1], device=text.device)[None].expand(B, -1)
    ctx = hf_adapter.AttentionContext(q_positions=pos)
    with hf_adapter.installed(model, comp.decoder_hooks(states, slots=P)):
        out = hf_adapter.decoder(model)(inputs_embeds=inputs, position_ids=pos, use_cache=False, longctx=ctx)
    return out.last_hidden_state


def encode_context(model, comp: RCCCompressor, context: torch.Tensor) -> torch.Tensor:
    """Slot states (B, m·W/r, L+1, H) of contexts (B, m·W), each window encoded on its own."""
    B = context.shape[0]
    windows = context.reshape(-1, comp.window)
    states = comp.encode(model, windows)
    return states.reshape(B, -1, *states.shape[2:])


def text_nll(model, hidden: torch.Tensor, text: torch.Tensor, P: int, first: int) -> torch.Tensor:
    """NLL (B, T - first) of text tokens ``first..`` (first >= 1), each predicted from the position before it."""
    h = hidden[:, P + first - 1 : P + text.shape[1] - 1]
    logits = model.get_output_embeddings()(h).float()
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), text[:, first:], reduction="none")


def distilled_text_loss(model, hidden: torch.Tensor, context: torch.Tensor, text: torch.Tensor, P: int, first: int,
                        weight: float) -> torch.Tensor:
    """``(1 - weight)·NLL + weight·KL(teacher ‖ reader)`` over text tokens ``first..``; the teacher is the model
    itself reading ``[context][text]`` as plain text (:mod:`longctx_llm.train.distill`)."""
    teacher = distill.teacher_hidden(model, torch.cat([context, text], 1))[:, context.shape[1] + first - 1 : -1]
    h = hidden[:, P + first - 1 : P + text.shape[1] - 1]
    nll, kl = distill.nll_and_kl(model.get_output_embeddings(), h, teacher, text[:, first:])
    return distill.mixed(nll, kl, weight)


class Sampler:
    """Continuation and reconstruction samples of a token stream."""

    def __init__(self, stream, tokenizer, window: int, cue: int, span: int, continuation: int):
        self.stream, self.window, self.cue, self.span, self.cont = stream, window, cue, span, continuation
        self.instr = torch.tensor(tokenizer(RECALL_INSTRUCTION, add_special_tokens=False)["input_ids"])

    def continuation(self, batch: int, windows: int, gen) -> tuple[torch.Tensor, torch.Tensor]:
        ids = self.stream.sample(batch, windows * self.window + self.cont, gen)
        return ids[:, : windows * self.window], ids[:, windows * self.window :]

    def reconstruction(self, batch: int, windows: int, gen) -> tuple[torch.Tensor, torch.Tensor, int]:
        C = windows * self.window
        ctx = self.stream.sample(batch, C, gen)
        starts = torch.randint(0, C - self.cue - self.span + 1, (batch,), generator=gen)
        pieces = torch.stack([ctx[b, s : s + self.cue + self.span] for b, s in enumerate(starts.tolist())])
        text = torch.cat([self.instr[None].expand(batch, -1), pieces], dim=1)
        return ctx, text, self.instr.numel() + self.cue  # loss on the span only


@torch.no_grad()
def heldout(model, comp, sampler: Sampler, samples: int, batch: int = 8, seed: int = 1234) -> dict[str, float]:
    """Held-out figures at one window of context: gap closed on the continuation, reconstruction accuracy.

    ``swapped``: the same figures with each sample reading another sample's slots, the control that shows how much
    of the gain comes from the context rather than from the decoder LoRAs alone (they also see this text)."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    nll = {"none": [], "rcc": [], "full": [], "swapped": []}
    acc = {"none": [], "rcc": [], "full": [], "swapped": []}
    for i in range(0, samples, batch):
        b = min(batch, samples - i)
        ctx, cont = (t.to(device) for t in sampler.continuation(b, 1, gen))
        states = encode_context(model, comp, ctx)
        nll["rcc"].append(text_nll(model, decoder_pass(model, comp, states, cont), cont, states.shape[1], 1).flatten())
        if b > 1:
            other = states.roll(1, dims=0)
            nll["swapped"].append(text_nll(model, decoder_pass(model, comp, other, cont), cont, other.shape[1], 1).flatten())
        logits = model(input_ids=cont).logits[:, :-1].float()
        nll["none"].append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), cont[:, 1:], reduction="none").flatten())
        full = torch.cat([ctx, cont], 1)
        logits = model(input_ids=full).logits[:, ctx.shape[1] : -1].float()
        nll["full"].append(torch.nn.functional.cross_entropy(logits.transpose(1, 2), cont[:, 1:], reduction="none").flatten())
        ctx, text, first = (t.to(device) if torch.is_tensor(t) else t for t in sampler.reconstruction(b, 1, gen))
        states = encode_context(model, comp, ctx)
        h = decoder_pass(model, comp, states, text)
        P = states.shape[1]
        pred = model.get_output_embeddings()(h[:, P + first - 1 : P + text.shape[1] - 1]).argmax(-1)
        acc["rcc"].append((pred == text[:, first:]).float().flatten())
        if b > 1:
            h = decoder_pass(model, comp, states.roll(1, dims=0), text)
            pred = model.get_output_embeddings()(h[:, P + first - 1 : P + text.shape[1] - 1]).argmax(-1)
            acc["swapped"].append((pred == text[:, first:]).float().flatten())
        pred = model(input_ids=text).logits[:, first - 1 : -1].argmax(-1)
        acc["none"].append((pred == text[:, first:]).float().flatten())
        full = torch.cat([ctx, text], 1)
        pred = model(input_ids=full).logits[:, ctx.shape[1] + first - 1 : -1].argmax(-1)
        acc["full"].append((pred == text[:, first:]).float().flatten())
    ppl = {k: math.exp(torch.cat(v).mean().item()) if v else float("nan") for k, v in nll.items()}
    accuracy = {k: round(torch.cat(v).mean().item(), 4) if v else float("nan") for k, v in acc.items()}

    def gap(p: float) -> float:
        return round((ppl["none"] - p) / (ppl["none"] - ppl["full"]), 4) if ppl["none"] != ppl["full"] else float("nan")

    return {
        "context_tokens": sampler.window, "ppl_none": round(ppl["none"], 4), "ppl_rcc": round(ppl["rcc"], 4),
        "ppl_full": round(ppl["full"], 4), "gap_closed": gap(ppl["rcc"]), "recall_span": sampler.span,
        "recall_cue": sampler.cue, "acc_none": accuracy["none"], "acc_rcc": accuracy["rcc"], "acc_full": accuracy["full"],
        "ppl_swapped": round(ppl["swapped"], 4), "gap_closed_swapped": gap(ppl["swapped"]),
        "acc_swapped": accuracy["swapped"],
    }


class RCCTrainer:
    """`longctx train rcc`: an RCC compressor (encoder, bridges, slot LoRA) for a model, on your text."""

    name = "rcc"
    help = "train an RCC compressor (long-prompt compression) for a model"

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        training.add_common_arguments(p)
        p.add_argument("--steps", type=int, default=2000)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--ratio", type=int, default=32)
        p.add_argument("--window", type=int, default=1024, help="tokens per encoded window (default: %(default)s)")
        p.add_argument("--windows", default="1", help="context windows per sample to draw from, e.g. 1,2")
        p.add_argument("--continuation", type=int, default=128, help="continuation tokens (default: %(default)s)")
        p.add_argument("--cue", type=int, default=8)
        p.add_argument("--span", type=int, default=64)
        p.add_argument("--recon-share", type=float, default=0.5, help="share of reconstruction steps")
        distill.add_argument(p)
        p.add_argument("--encoder", choices=["lora", "full"], default="lora", help="LoRA on the model, or a full copy")
        p.add_argument("--encoder-rank", type=int, default=16)
        p.add_argument("--encoder-targets", default="attention,mlp")
        p.add_argument("--slot-rank", type=int, default=16, help="conditional LoRA at slot positions (0: none)")
        p.add_argument("--reader-rank", type=int, default=16, help="LoRA at text positions that read slots (0: none)")
        p.add_argument("--reader-targets", default="attention,mlp")
        p.add_argument("--lr", type=float, default=3e-4)
        p.add_argument("--bridge-lr", type=float, default=None, help="learning rate of the bridges (default: --lr)")
        p.add_argument("--encoder-lr", type=float, default=None, help="learning rate of a full encoder (default: --lr)")
        p.add_argument("--warmup", type=int, default=100)
        p.add_argument("--eval-samples", type=int, default=128)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        from longctx_llm import ModelHandle

        if args.window % args.ratio:
            raise InputError(f"--window {args.window} is not a multiple of --ratio {args.ratio}")
        try:
            n_windows = [int(x) for x in args.windows.split(",") if x.strip()]
        except ValueError as e:
            raise InputError(f"--windows: expected comma-separated integers, got {args.windows!r}") from e
        if not n_windows or min(n_windows) < 1 or args.steps <= 0 or args.batch <= 0:
            raise InputError("--windows, --steps and --batch must be positive")
        if args.cue < 1 or args.span < 1 or args.window * min(n_windows) < args.cue + args.span:
            raise InputError(
                f"--cue {args.cue} and --span {args.span} must be positive and fit in the context "
                f"(--window {args.window} x {min(n_windows)} window(s))"
            )
        distill.check(args.distill)
        training.check_out(args.out)  # a file or a foreign folder is refused before any work
        sources = training.read_data(args)  # bad data is refused before the model loads
        loaded = ModelHandle(args.model, device=args.device, dtype=args.dtype).get()
        model, device = loaded.model, loaded.device
        model.requires_grad_(False)
        corpus = training.tokenize_data(sources, loaded.tokenizer)
        train_stream, held_stream, data_info = corpus.train, corpus.heldout, corpus.info
        targets = [t.strip() for t in args.encoder_targets.split(",") if t.strip()]
        torch.manual_seed(training.stable_seed(args.seed, "init"))  # the initial weights follow --seed
        comp = RCCCompressor(
            model, encoder=args.encoder, ratio=args.ratio, window=args.window, encoder_rank=args.encoder_rank,
            encoder_projections=targets, slot_rank=args.slot_rank, reader_rank=args.reader_rank,
            reader_projections=[t.strip() for t in args.reader_targets.split(",") if t.strip()],
        ).to(device)
        if comp.encoder is not None:
            comp.encoder.float().requires_grad_(True)
        params = comp.trainable()
        bridge = [p for k, p in params.items() if "bridge" in k]
        full = [p for k, p in params.items() if k.startswith("encoder.")]
        rest = [p for k, p in params.items() if "bridge" not in k and not k.startswith("encoder.")]
        blr, elr = args.bridge_lr or args.lr, args.encoder_lr or args.lr
        groups = [{"params": rest, "lr": args.lr, "peak": args.lr}, {"params": bridge, "lr": blr, "peak": blr}]
        if full:
            groups.append({"params": full, "lr": elr, "peak": elr})
        opt = torch.optim.AdamW(groups, weight_decay=0.0, betas=(0.9, 0.98))
        out = Path(args.out).expanduser()
        ckpt = training.Checkpoint(out)
        start, meta = 0, {}
        if ckpt.exists() and not args.no_resume:
            start, meta = ckpt.load(params, opt)
            logger.warning("resuming from %s at step %d", ckpt.path, start)
        elif args.init:
            init = RCCCompressor.load(args.init, model, loaded.fingerprint)
            missing = sorted(set(init.trainable()) - set(params))
            if missing and not (comp.encoder is not None and init.encoder_lora is not None):
                raise InputError(f"--init {args.init}: its tensors {missing[:3]}... have no place in this compressor")
            with torch.no_grad():
                for k, v in init.trainable().items():
                    if k in params:
                        params[k].copy_(v.to(params[k].dtype))
            if comp.encoder is not None and init.encoder_lora is not None:
                comp.merge_encoder_lora(init.to(device))  # a full encoder continuing from a LoRA one
            start = int((init.card.get("training") or {}).get("steps", 0))
            meta = {"tokens": (init.card.get("training") or {}).get("tokens", 0),
                    "wall_time_s": (init.card.get("training") or {}).get("wall_time_s", 0.0)}
            meta["warm_from"] = start  # a fresh optimizer warms up again
            logger.warning("starting from the weights of %s (step %d), fresh optimizer", args.init, start)
        wall, tokens_seen = float(meta.get("wall_time_s", 0.0)), int(meta.get("tokens", 0))
        warm_from = int(meta.get("warm_from", 0))
        sampler = Sampler(train_stream, loaded.tokenizer, args.window, args.cue, args.span, args.continuation)
        autocast = training.autocast(device)
        bar = training.Progress(args.steps, start, "train rcc")
        comp.train()
        t0 = time.perf_counter()
        budget = training.Budget(args.steps, args.time_budget, start)
        step = done = start
        try:
            for step in range(start + 1, args.steps + 1):
                rng, gen = training.step_random(args.seed, step)
                m = rng.choice(n_windows)
                recon = rng.random() < args.recon_share
                if recon:
                    ctx, text, first = sampler.reconstruction(args.batch, m, gen)
                else:
                    (ctx, text), first = sampler.continuation(args.batch, m, gen), 1
                ctx, text = ctx.to(device), text.to(device)
                for g in opt.param_groups:
                    g["lr"] = training.cosine_lr(step - 1, args.steps, g["peak"], args.warmup, budget.progress(step - 1),
                                                 warm_from)
                with autocast:
                    states = encode_context(model, comp, ctx)
                    hidden = decoder_pass(model, comp, states, text)
                    if args.distill > 0:
                        loss = distilled_text_loss(model, hidden, ctx, text, states.shape[1], first, args.distill)
                    else:
                        loss = text_nll(model, hidden, text, states.shape[1], first).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
                opt.step()
                done = step
                n_tok = ctx.numel() + text.numel()
                tokens_seen += n_tok
                bar.update(step, loss.item(), n_tok)
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
        comp.eval()
        held_sampler = Sampler(held_stream, loaded.tokenizer, args.window, args.cue, args.span, args.continuation)
        with autocast:
            figures = heldout(model, comp, held_sampler, args.eval_samples)
            by_source = {}
            if len(corpus.heldout_by_source) > 1:
                for label, stream in corpus.heldout_by_source.items():
                    s = Sampler(stream, loaded.tokenizer, args.window, args.cue, args.span, args.continuation)
                    by_source[label] = heldout(model, comp, s, args.eval_samples)
        card = {
            "base_model": training.base_model_card(loaded, args.model_name),
            "data": data_info,
            "training": {
                "steps": step, "batch": args.batch, "windows": n_windows, "continuation": args.continuation,
                "cue": args.cue, "span": args.span, "recon_share": args.recon_share, "distill": args.distill, "lr": args.lr,
                "bridge_lr": blr, "encoder_lr": elr if full else None, "warmup": args.warmup, "tokens": tokens_seen, "wall_time_s": round(wall, 1),
                "device": training.device_name(device), "dtype": str(loaded.dtype), **training.environment(),
                "command": training.command_line("rcc", args),
            },
            "heldout": {"samples": args.eval_samples, **figures},
        }
        if by_source:
            card["heldout_by_source"] = by_source
        comp.save(out, card)
        print(json.dumps({"compressor": str(out), "heldout": figures, **({"by_source": by_source} if by_source else {})},
                         indent=1))
        return 0
