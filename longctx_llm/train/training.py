"""What every adapter trainer shares (``longctx train ccm``, ``longctx train rcc``): data, checkpoints, progress.

- :func:`read_data` reads and checks the ``--data`` files (one, several with weights, or a mix file:
  :mod:`longctx_llm.train.datamix`) before any model loads; :func:`tokenize_data` makes the training and held-out
  streams (every 10th document of each file held out, :data:`textdata.HOLDOUT_EVERY`); :class:`~.datamix.TokenStream`
  samples contiguous spans from one; :func:`step_random` fixes each step's draws, so a resumed run sees the same data.
- :class:`Checkpoint` saves the trainable tensors, the optimizer's moments and the step in the adapter file format
  (shards of at most 16 MB), so an interrupted run resumes where it stopped (``--resume``, the default when the
  output folder holds a checkpoint).
- :func:`check_out` refuses an ``--out`` that is a file or a folder of something else, before any model loads.
- :func:`base_model_card` records what an adapter was trained on: the base model's name, file hash and shapes.

Trainers register under the entry-point group ``longctx_llm.trainers`` as an object with ``name``, ``help``,
``add_arguments(parser)`` and ``run(args) -> int``; the core CLI finds them there (the core never imports a plugin).
"""

from __future__ import annotations

import hashlib
import logging
import math
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import InputError
from ..eval.textdata import HOLDOUT_EVERY
from ..model import adapters as files

logger = logging.getLogger("longctx_llm.train")


@dataclass
class Corpus:
    """Token streams of the training text: training, held out (all files mixed), held out per file, card info."""

    train: Any  # datamix.MixedStream
    heldout: Any
    heldout_by_source: dict[str, Any]
    info: dict[str, Any]


def read_data(args) -> list:
    """Read and check ``--data`` / ``--data-weights`` (every file, before any model loads)."""
    from . import datamix

    return datamix.read_mix(datamix.parse_data(args.data, getattr(args, "data_weights", None)))


def check_out(out: str) -> Path:
    """``--out`` checked before any data is read or model loaded: a folder that does not exist yet, or an adapter
    folder a trainer wrote (replaced at the end; its checkpoint resumes). Anything else is an InputError and nothing
    is written."""
    path = Path(out).expanduser()
    hint = "give a folder that does not exist yet, or an adapter folder written by `longctx train`"
    if path.is_file() or (path.exists() and not path.is_dir()):
        raise InputError(f"--out: {str(path)!r} is a file, not a folder; {hint}")
    if path.is_dir() and not files.is_adapter_dir(path):
        try:
            names = sorted(p.name for p in path.iterdir())
        except OSError as e:
            raise InputError(f"--out: {str(path)!r} cannot be read ({e.strerror or e}); {hint}") from None
        raise InputError(
            f"--out: {str(path)!r} exists and is not an adapter directory (no {files.CARD}; it holds {len(names)} "
            f"entr{'y' if len(names) == 1 else 'ies'}, e.g. {names[0]!r}); {hint}. Nothing was written"
        )
    for parent in path.parents:  # the first existing folder above must be a folder (mkdir would fail at the end)
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"--out: {str(parent)!r} (above {str(path)!r}) is a file, not a folder; {hint}")
            break
    return path


def tokenize_data(sources: list, tokenizer) -> Corpus:
    from . import datamix

    train, held, by_source, info = datamix.tokenize_mix(sources, tokenizer)
    return Corpus(train, held, by_source, info)


def load_corpus(path: str, tokenizer, every: int = HOLDOUT_EVERY) -> tuple[Any, Any, dict[str, Any]]:
    """Tokenise one text file into (train, held-out) streams and describe it for the adapter card."""
    from . import datamix

    train, held, _, info = datamix.tokenize_mix(datamix.read_mix(datamix.parse_data([path]), every), tokenizer, every)
    return train, held, info


def step_random(seed: int, step: int) -> tuple[random.Random, torch.Generator]:
    """The choices and the data of one step, fixed by (seed, step): a resumed run draws what an uninterrupted one
    would have drawn at that step."""
    return (random.Random(stable_seed(seed, step)),
            torch.Generator().manual_seed(stable_seed(seed, "data", step)))


def base_model_card(loaded, name: Optional[str] = None) -> dict[str, Any]:
    return {"name": name or loaded.source, "sha256": loaded.fingerprint, **files.model_facts(loaded.model)}


def add_common_arguments(p) -> None:
    """Options every trainer takes."""
    p.add_argument("--model", default="smollm2-135m-instruct", help="alias, HF model dir or .gguf (default: %(default)s)")
    p.add_argument("--model-name", default=None, help="the base model's name recorded in the card (default: --model)")
    p.add_argument("--data", required=True, action="append",
                   help="training text: .txt or .jsonl[.gz] with a 'text' field; repeat for several files, or give one "
                        "mix file (.yaml: files, weights, groups; see longctx_llm.train.datamix)")
    p.add_argument("--data-weights", default=None,
                   help="sampling weights of the --data files, e.g. 0.3,0.7 (default: by their training tokens)")
    p.add_argument("--out", required=True, help="output directory (also holds the resumable checkpoint)")
    p.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds of training")
    p.add_argument("--save-every", type=int, default=500, help="checkpoint every N steps (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="auto", help="model dtype: auto (bfloat16 on GPU), float32, bfloat16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    p.add_argument("--init", default=None,
                   help="start from the weights of this adapter directory (e.g. a shipped one) with a fresh optimizer; "
                        "ignored when --out holds a checkpoint to resume")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def environment() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()}


def cosine_lr(step: int, total: int, peak: float, warmup: int, progress: Optional[float] = None,
              warm_from: int = 0) -> float:
    """Linear warm-up over ``warmup`` steps from step ``warm_from`` (where the optimizer started fresh: 0, or the
    step an ``--init`` run starts at), then a cosine from ``peak`` down to peak / 10.

    ``progress`` (0..1), when given, replaces ``step / total`` after the warm-up: a run with a time budget follows
    whichever of steps and time is further along.
    """
    if 0 <= step - warm_from < warmup:
        return peak * (step - warm_from + 1) / warmup
    if progress is None:
        progress = (step - warmup) / max(1, total - warmup)
    progress = min(1.0, max(0.0, progress))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


class Budget:
    """How far a run is: by steps, or by wall time when ``seconds`` is set (whichever is further)."""

    def __init__(self, steps: int, seconds: Optional[float], start_step: int = 0):
        self.steps, self.seconds, self.start_step = steps, seconds, start_step
        self.t0 = time.perf_counter()

    def progress(self, step: int) -> float:
        p = step / self.steps
        if self.seconds:
            p = max(p, (time.perf_counter() - self.t0) / self.seconds)
        return min(1.0, p)

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.seconds is not None and time.perf_counter() - self.t0 >= self.seconds)


@dataclass
class Checkpoint:
    """``DIR/checkpoint``: trainable tensors + optimizer moments + step, resumable."""

    directory: Path

    @property
    def path(self) -> Path:
        return Path(self.directory) / "checkpoint"

    def exists(self) -> bool:
        return (self.path / files.CARD).is_file()

    def save(self, step: int, params: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, meta: dict) -> None:
        tensors = {f"param.{k}": v.detach().float() for k, v in params.items()}
        names = {id(p): k for k, p in params.items()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                st = optimizer.state.get(p, {})
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in st:
                        tensors[f"opt.{key}.{names[id(p)]}"] = st[key].detach().float()
        steps = {names[id(p)]: float(optimizer.state[p]["step"]) for g in optimizer.param_groups for p in g["params"]
                 if p in optimizer.state and "step" in optimizer.state[p]}
        files.save_adapter(self.path, tensors, {"kind": "checkpoint", "step": step, "adam_steps": steps, "meta": meta})

    def load(self, params: dict[str, torch.Tensor], optimizer: Optional[torch.optim.Optimizer]) -> tuple[int, dict]:
        tensors, card = files.load_adapter(self.path, kind="checkpoint")
        with torch.no_grad():
            for k, p in params.items():
                t = tensors.get(f"param.{k}")
                if t is None or t.shape != p.shape:
                    raise InputError(f"checkpoint {str(self.path)!r} does not match this run ({k!r} missing or reshaped)")
                p.copy_(t.to(p.dtype))
        if optimizer is not None:
            steps = card.get("adam_steps") or {}
            for k, p in params.items():
                ea, eb = tensors.get(f"opt.exp_avg.{k}"), tensors.get(f"opt.exp_avg_sq.{k}")
                if ea is not None and eb is not None:
                    optimizer.state[p] = {
                        "step": torch.tensor(steps.get(k, 0.0)),
                        "exp_avg": ea.to(p.device, p.dtype),
                        "exp_avg_sq": eb.to(p.device, p.dtype),
                    }
        return int(card.get("step", 0)), dict(card.get("meta") or {})


def save_interrupted(ckpt: "Checkpoint", step: int, params, optimizer, meta: dict) -> None:
    """Ctrl-C during training: keep the last completed step in the checkpoint, so the same command resumes there."""
    ckpt.save(step, params, optimizer, meta)
    logging.getLogger("longctx_llm.train").warning(
        "interrupted: step %d saved to %s; run the same command again to resume", step, ckpt.path
    )


class Progress:
    """A progress bar with loss and tokens/s (a log line every ``every`` steps when stderr is not a terminal)."""

    def __init__(self, total: int, initial: int, desc: str, every: int = 50):
        import sys

        from tqdm.auto import tqdm

        self.tty = sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not self.tty)
        self.every, self.t0, self.tokens, self.total = every, time.perf_counter(), 0, total
        self.loss_ema: Optional[float] = None

    def update(self, step: int, loss: float, tokens: int) -> None:
        self.tokens += tokens
        self.loss_ema = loss if self.loss_ema is None else 0.95 * self.loss_ema + 0.05 * loss
        rate = self.tokens / max(1e-9, time.perf_counter() - self.t0)
        self.bar.set_postfix(loss=f"{self.loss_ema:.3f}", tok_s=f"{rate:,.0f}")
        self.bar.update(1)
        if not self.tty and (step % self.every == 0 or step == self.total):
            logger.info("step %d/%d loss %.4f  %.0f tokens/s", step, self.total, self.loss_ema, rate)

    def close(self) -> None:
        self.bar.close()


def stable_seed(*parts: Any) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def run_meta(args, tokens: int, wall: float, warm_from: int = 0) -> dict[str, Any]:
    """What a checkpoint records about the run (simple argument values, tokens seen, wall time, where the
    optimizer's warm-up started)."""
    simple = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return {"tokens": tokens, "wall_time_s": round(wall, 1), "args": simple, "warm_from": warm_from}


def command_line(trainer: str, args) -> str:
    """The ``longctx train`` command that reproduces a run (for the adapter card)."""
    skip = {"fn", "command", "trainer", "rest", "log_level"}
    out = ["longctx", "train", trainer]
    for k, v in vars(args).items():
        if k in skip or v is None or v is False or callable(v):
            continue
        flag = "--" + k.replace("_", "-")
        if isinstance(v, (list, tuple)):
            for item in v:
                out += [flag, str(item)]
        else:
            out += [flag] if v is True else [flag, str(v)]
    return " ".join(out)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (trainable weights stay float32), nothing on CPU."""
    import contextlib

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
