"""Helpers shared by the benchmark scripts: output folder, JSON, optional PNG plot, table printing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch


def out_dir(path: str) -> Path:
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    return p


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def header(device: str, **extra) -> dict:
    return {"device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), **extra}


def write_json(out: Path, name: str, data: dict) -> None:
    (out / name).write_text(json.dumps(data, indent=2))


def print_table(rows: list[dict], cols: list[str]) -> None:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(cols, widths)))


def plot(out: Path, name: str, series: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
         logx: bool = True, logy: bool = False) -> None:
    """Write ``name`` (PNG) when matplotlib is importable; silently skip otherwise."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in series.items():
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / name, dpi=120)
    plt.close(fig)


def add_model_shape_args(p, layers: int = 4) -> None:
    """Arguments of the random-weight Llama-3-8B-shaped model (``--layers`` of its 32, to fit beside long caches)."""
    p.add_argument("--layers", type=int, default=layers)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--intermediate", type=int, default=14336)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=128256)


def random_compressor(loaded) -> str:
    """A random RCC compressor of the shipped shape (window 1024, ratio 32, ranks 16) for ``loaded``, saved to a
    temporary directory: speed and memory do not depend on its weights, and it travels to a GPU in no carry."""
    import tempfile

    from longctx_rcc.compressor import RCCCompressor

    from longctx_llm.model import adapters as files

    comp = RCCCompressor(loaded.model, window=1024, ratio=32, encoder_rank=16, encoder_projections=("attention", "mlp"),
                         slot_rank=16, reader_rank=16)
    path = Path(tempfile.mkdtemp()) / "random-compressor"
    comp.save(path, {"base_model": {"name": "random", **files.model_facts(loaded.model)}})
    return str(path)


def random_llama(args, tokenizer, device, dtype, max_positions: int = 8192):
    """A random-weight Llama of the shape in ``args`` (see :func:`add_model_shape_args`), as a LoadedModel."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from longctx_llm.model import wrap_model

    cfg = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max_positions, rope_theta=500000.0,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(dtype)
    return wrap_model(model, tokenizer, source="random-llama-8b-shape")


def _option_value(text: str):
    """An inline option's value: int, float, true/false, or the text itself."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def variant_specs(text: str, bases: dict[str, dict]) -> dict[str, dict]:
    """Strategy specs of comma-separated variants, each a name of ``bases`` optionally followed by ``/option=value``
    pairs that override its options; the whole text is the variant's label: ``dca/chunk_size=3072/local_window=384``.
    """
    specs = {}
    for label in [v.strip() for v in text.split(",") if v.strip()]:
        name, *pairs = label.split("/")
        if name not in bases:
            raise SystemExit(f"--variants: unknown variant {name!r} (known: {', '.join(bases)})")
        spec = dict(bases[name])
        for pair in pairs:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise SystemExit(f"--variants: {label!r}: expected option=value after '/', got {pair!r}")
            spec[key] = _option_value(value)
        specs[label] = spec
    return specs


def add_shape_args(p, layers: int = 4) -> None:
    """``--shape``: the embedded model (``--model``) or a random-weight Llama-3-8B shape (see add_model_shape_args)."""
    p.add_argument("--shape", choices=("smollm2", "llama-8b"), default="smollm2")
    p.add_argument("--model", default="smollm2-135m-instruct", help="smollm2 shape: an alias, HF folder or .gguf")
    p.add_argument("--tokenizer", default=None, help="llama-8b shape: a tokenizer directory (default: SmolLM2's)")
    p.add_argument("--pretraining-length", type=int, default=131072,
                   help="llama-8b shape: its max_position_embeddings (DCA's chunks and window follow it)")
    p.add_argument("--device", default="auto")
    add_model_shape_args(p, layers)


def load_shape(args):
    """The LoadedModel of ``args.shape``: the embedded model on ``--device``, or the random 8B-shaped Llama (bf16 on
    a GPU, float32 on CPU)."""
    from longctx_llm import ModelHandle

    if args.shape == "smollm2":
        return ModelHandle(args.model, device=args.device).get()
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    return random_llama(args, load_tokenizer(args.tokenizer, args.model), dev, dtype,
                        max_positions=args.pretraining_length)


def load_tokenizer(tokenizer_dir=None, model: str = "smollm2-135m-instruct"):
    """A tokenizer directory's tokenizer, or (None) the tokenizer of ``model`` (an alias, directory or .gguf)."""
    if tokenizer_dir:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer_dir)
    from longctx_llm import ModelHandle

    return ModelHandle(model, device="cpu").get().tokenizer


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device-to-device copy (read + write), best of 6."""
    device = torch.device(device)
    n = 1 << 28 if device.type == "cuda" else 1 << 24
    a = torch.empty(n, dtype=torch.float32, device=device).normal_()
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(6):
        sync(device)
        t = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * a.numel() * 4 / best


def reply_timing(t0: float, first, end: float, tokens: int) -> dict:
    """One streamed reply's figures: time to first token, total time, tokens/s over the whole request and after the
    first token (``first``: when the first chunk arrived, None if none did)."""
    first = first or end
    return {
        "ttft_ms": 1000 * (first - t0),
        "total_s": end - t0,
        "tokens": tokens,
        "tok_s": tokens / (end - t0),
        "decode_tok_s": (tokens - 1) / (end - first) if tokens > 1 and end > first else float("nan"),
    }
