"""``rcc``: Recurrent Context Compression (arXiv 2406.06110, REFERENCE §4) as a long-prompt strategy.

The text is cut into windows of W tokens. The decoder's cache holds ``[slots of compressed windows][the raw text
after them]``: a token at text position i is read with the slots of windows ``0 .. n(i) - 1`` (W / ratio each, at
positions ``0 .. P-1``), ``n(i) = max(0, i - raw_tail) // W``, and the raw text from window ``n(i)`` on (at ``P ..``),
through the compressor's reader LoRA when it has one. So the last ``raw_tail`` tokens before any token are always
raw text (``raw_tail: 0``: a token right after a window boundary reads slots alone). When a window has ``raw_tail``
tokens after it, it is encoded and its raw entries give way to its slots (the raw tokens after it are read again
after the new slots), so memory grows ``ratio`` times slower than the text. A long prompt's windows are encoded in
batches (``encode_batch`` windows per encoder pass) and never run raw through the decoder unless their logits are
asked for (scoring).

A prompt shorter than one window never reaches the compressor: RCC then *is* plain attention.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Optional

import torch

from longctx_llm.errors import AdapterError, ConfigError, InputError, LongctxError, SessionError, UnsupportedModelError
from longctx_llm.model import hf_adapter
from longctx_llm.runtime import (
    Capabilities,
    KVCacheState,
    Strategy,
    StrategyState,
    fast_decode_defaults,
    progress_bar,
    restore,
)

from .compressor import RCCCompressor, find_shipped
from .options import RCCOptions
from .pool import RCCPool

logger = logging.getLogger(__name__)


class RCCState(StrategyState):
    """One sequence under RCC: the text fed so far, how many windows are compressed, the decoder's cache."""

    def __init__(self, model, options: RCCOptions, compressor: RCCCompressor):
        self.model = model  # LoadedModel
        self.options, self.compressor = options, compressor
        self.window, self.per_window = options.window, options.window // options.ratio
        self.tail = options.raw_tail
        static, graphs = fast_decode_defaults(model, options.static_cache, options.cuda_graphs)
        self.decoder = KVCacheState(model, 1, prefill_chunk_size=options.prefill_chunk_size, static_cache=static,
                                    cuda_graphs=graphs, compile_steps=options.compile, lookahead=options.lookahead)
        self.text: list[int] = []  # every token fed (rewinding into a compressed window re-encodes from these)
        self.windows = 0  # complete windows compressed into slots
        self.seen = 0

    @property
    def lookahead(self) -> bool:
        """Decode one step ahead when the decoder does (a token fed ahead across a window's end compresses that
        window one token early; rewinding it leaves the window compressed, which the next token would do anyway)."""
        return self.decoder.lookahead

    @property
    def slots(self) -> int:
        return self.windows * self.per_window

    @property
    def cache_entries(self) -> int:
        """Entries the decoder's cache holds (slots + the current window's tokens)."""
        return self.decoder.seen

    def reserve(self, tokens: int) -> None:
        """The decoder's cache holds the slots of complete windows plus one window and the raw tail of text."""
        self.decoder.reserve(-(-tokens // self.window) * self.per_window + self.window + self.tail)

    def windows_for(self, position: int) -> int:
        """Windows compressed before the token at text ``position`` is read (the last ``raw_tail`` stay raw)."""
        return max(0, position - self.tail) // self.window

    # ---- compression ---------------------------------------------------------------------------------------
    def _compress(self, upto: int) -> None:
        """Compress windows ``self.windows .. upto - 1`` (their text is complete and followed by more)."""
        W, model = self.window, self.model
        if upto <= self.windows:
            return
        self.decoder.rewind(self.slots)  # the raw entries go (those after the compressed windows are read again)
        ids = torch.tensor(self.text[self.windows * W : upto * W], device=model.device).view(-1, W)  # (n, W)
        bs = self.options.encode_batch
        with progress_bar(total=ids.shape[0], desc="rcc encode", unit="win", enabled=ids.shape[0] >= 8) as bar:
            for start in range(0, ids.shape[0], bs):
                with model.lock:
                    states = self.compressor.encode(model.model, ids[start : start + bs])  # (b, W/r, L+1, H)
                states = states.reshape(1, -1, *states.shape[2:])  # (1, b·W/r, L+1, H): slots in text order
                self._feed_slots(states)
                bar.update(states.shape[1] // self.per_window)
        self.windows = upto

    def _feed_slots(self, states: torch.Tensor) -> None:
        step = self.options.prefill_chunk_size
        for s in range(0, states.shape[1], step):
            part = states[:, s : s + step]
            emb = self.compressor.slot_inputs(part, self.model.dtype)
            self.decoder.forward(None, inputs_embeds=emb, hooks=self.compressor.decoder_hooks(part))

    def _reader(self):
        """Hooks for text read after slots (the compressor's reader LoRA); None before the first slot."""
        return self.compressor.reader_hooks() if self.windows else None

    # ---- the strategy contract -----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids, attention_mask=None, *, all_logits=False, inputs_embeds=None, hooks=None):
        if inputs_embeds is not None or hooks is not None:
            raise LongctxError("rcc: feeding embeddings or hooks through an RCC state is not supported")
        if input_ids.shape[0] != 1:
            raise InputError(f"rcc: one sequence at a time (batching is not supported), got {input_ids.shape[0]} rows")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise InputError("rcc: padded rows are not supported; feed one unpadded sequence")
        new = input_ids[0].tolist()
        if not new:
            raise InputError("rcc: no tokens to feed")
        W = self.window
        pos, end = len(self.text), len(self.text) + len(new)
        self.text.extend(new)
        outs, last = [], None
        while pos < end:
            # the windows the next token reads compressed; without all logits, those the last new token does, so a
            # long prompt's windows are encoded together (``encode_batch`` at a time) and never run raw
            need = self.windows_for(pos if all_logits else end - 1)
            if need > self.windows:
                self._compress(need)
            stop = min(end, (self.windows + 1) * W + self.tail)  # the next token that compresses a window
            if not all_logits and stop < end:
                pos = stop  # text compressed inside this input: encoded when its tail is complete, never run raw
                continue
            cached = self.windows * W + self.decoder.seen - self.slots  # text in the cache: up to here
            piece = torch.tensor([self.text[cached:stop]], device=self.model.device)  # raw text again, then the new
            last = self.decoder.forward(piece, all_logits=all_logits, hooks=self._reader())
            if all_logits:
                outs.append(last[:, pos - cached :])
            pos = stop
        self.seen = end
        return torch.cat(outs, dim=1) if all_logits else last

    def rewind(self, length: int) -> None:
        if not 0 <= length <= self.seen:
            raise LongctxError(f"cannot rewind to {length}: {self.seen} tokens were fed")
        W = self.window
        keep = min(self.windows, self.windows_for(length))  # as a state fed ``length`` tokens reads the next one
        if keep < self.windows:  # back into compressed text: drop later windows' slots, re-feed the rest raw
            self.decoder.rewind(keep * self.per_window)
            self.windows = keep
            raw = self.text[keep * W : length]
            del self.text[length:]
            self.seen = length
            if raw:
                self.decoder.forward(torch.tensor([raw], device=self.model.device), hooks=self._reader())
            return
        self.decoder.rewind(self.slots + (length - self.windows * W))
        del self.text[length:]
        self.seen = length

    def state_dict(self):
        tensors, meta = self.decoder.state_dict()
        tensors = {f"decoder.{k}": v for k, v in tensors.items()}
        tensors["text"] = torch.tensor(self.text, dtype=torch.long)
        return tensors, {"decoder": meta, "windows": self.windows, "seen": self.seen, "window": self.window}

    def load_state_dict(self, tensors, meta):
        try:
            if int(meta["window"]) != self.window:
                raise SessionError(f"saved rcc state used window {meta['window']}, this strategy uses {self.window}")
            text = tensors["text"]
            if text.dim() != 1 or text.is_floating_point():
                raise SessionError(
                    f"saved rcc state: text is a {tuple(text.shape)} {text.dtype} tensor, expected token ids"
                )
            seen = restore.meta_int(meta, "seen", text.numel(), text.numel(), "rcc",
                                    f"its text holds {text.numel()} tokens")
            windows = restore.meta_int(meta, "windows", 0, seen // self.window, "rcc",
                                       f"{seen} tokens fill {seen // self.window} window(s) of {self.window}")
            self.decoder.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("decoder.")}, meta["decoder"])
            expected = windows * self.per_window + seen - windows * self.window  # slots, then the raw rest
            if self.decoder.seen != expected:
                raise SessionError(f"saved rcc state: its decoder cache holds {self.decoder.seen} entries, but "
                                   f"{windows} compressed window(s) and {seen - windows * self.window} raw tokens "
                                   f"make {expected}")
            self.text = text.tolist()
            self.windows, self.seen = windows, seen
        except (KeyError, TypeError, ValueError) as e:
            raise SessionError(f"saved rcc state is malformed: {e}") from e


class RCCStrategy(Strategy):
    """A long prompt compressed ``ratio`` times, window by window, by a trained compressor.

    >>> from longctx_llm import Engine                                                   # doctest: +SKIP
    >>> engine = Engine(strategy={"name": "rcc", "ratio": 32, "window": 1024})          # doctest: +SKIP
    """

    name = "rcc"
    Options = RCCOptions
    capabilities = Capabilities(batching=False, cpu=True, rewind=True, save=True)

    def __init__(self, options: Optional[RCCOptions] = None, **kwargs: Any):
        super().__init__(options, **kwargs)
        self._compressors: dict[int, tuple] = {}
        self._lock = threading.Lock()

    def validate(self, info: hf_adapter.ModelInfo) -> None:
        if info.model_type not in hf_adapter.ARCHITECTURES:
            raise UnsupportedModelError(
                f"strategy 'rcc' supports model types {', '.join(sorted(hf_adapter.ARCHITECTURES))}; "
                f"got {info.model_type!r}"
            )
        L, o = info.pretraining_length, self.options
        if L and o.window + o.raw_tail >= L:
            raise ConfigError(
                f"strategy.window + strategy.raw_tail: {o.window} + {o.raw_tail} must be below the model's pretraining "
                f"length {L} (the slots, the current window and the raw tail share it)"
            )

    def prepare(self, model) -> None:
        self.compressor_for(model)

    def compressor_for(self, model) -> RCCCompressor:
        """Load (once per loaded model) and check the compressor for a LoadedModel."""
        with self._lock:
            got = self._compressors.get(id(model))
            if got is not None and got[0]() is model:
                return got[1]
            fp = model.fingerprint
            path = self.options.compressor or find_shipped(fp)
            if path is None:
                raise AdapterError(
                    f"strategy rcc: no trained compressor ships for model {model.source!r}; train one with "
                    "`longctx train rcc --model ... --out DIR` and set strategy.compressor: DIR"
                )
            from .official import is_official_layout, load_official

            if is_official_layout(path):
                comp = load_official(path, model.model)
            else:
                comp = RCCCompressor.load(path, model.model, fp)
            o = self.options
            if o.window > comp.window:
                raise ConfigError(
                    f"strategy.window: {o.window} is above the window compressor {str(path)!r} was trained on "
                    f"({comp.window}); valid: at most {comp.window}"
                )
            if o.ratio != comp.ratio:
                raise ConfigError(
                    f"strategy.ratio: {o.ratio} differs from the ratio compressor {str(path)!r} was trained for "
                    f"({comp.ratio})"
                )
            comp = comp.to(device=model.device, dtype=model.dtype).eval()
            comp.requires_grad_(False)
            self._compressors[id(model)] = (weakref.ref(model), comp)  # an id is reused after its model is freed
            return comp

    def context_window(self, info) -> Optional[int]:
        """Text tokens that fit: slots, the current window and the raw tail share the model's positions
        (P + W + raw_tail <= L)."""
        L, W, r = info.pretraining_length, self.options.window, self.options.ratio
        if not L:
            return None
        raw = W + self.options.raw_tail
        return (L - raw) * r + raw

    def attention_span(self, info) -> int:
        return int(info.pretraining_length or self.options.window)

    def raw_tail(self) -> int:
        return self.options.raw_tail

    def row_pool(self, model):
        """Replies decode together, each on its own decoder (slots and raw text): ``pool.py``."""
        return RCCPool(self, model, RCCState)

    def new_state(self, model, batch_size: int = 1) -> RCCState:
        if batch_size != 1:
            raise InputError(f"rcc: one sequence at a time (batching is not supported), got batch size {batch_size}")
        return RCCState(model, self.options, self.compressor_for(model))
