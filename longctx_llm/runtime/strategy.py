"""The strategy contract: how a prompt is laid into the model (cache, attention, positions).

A :class:`Strategy` is the configured plugin (one per pipeline); a :class:`StrategyState` is its per-sequence
state (one per session). The engine only ever calls ``StrategyState.forward`` (feed new tokens, get logits),
``rewind`` (drop cached tokens for prefix reuse) and ``state_dict``/``load_state_dict``; it never branches on a
strategy's name.

Most strategies are a KV cache plus a different choice at one of three seams, so :class:`KVCacheState`
implements ``forward`` once (chunked prefill, padding, positions) and lets a subclass override only:

- :meth:`KVCacheState.make_cache` — the cache (StreamingLLM: sink + ring window);
- :meth:`KVCacheState.logical_positions` — where new tokens sit (StreamingLLM: the next cache slots);
- :meth:`KVCacheState.rope_positions` — the positions fed to RoPE (DCA: ``j mod s``);
- :meth:`KVCacheState.attention` — the attention function (DCA: three partial attentions, LSE-merged).

Strategies that act differently (RCC encodes the prompt once, window by window) override ``forward`` itself.

Memories that keep past turns as key/value slots (CCM) edit the cache through three more methods every editable
state offers: :meth:`KVCacheState.kv_span` (read entries), :meth:`KVCacheState.splice` (replace a span of entries,
moving the later ones) and :meth:`KVCacheState.compact_tail` (drop a span just before the newest entries). A forward
may carry embeddings instead of token ids and per-call :class:`~longctx_llm.model.hf_adapter.ForwardHooks` (CCM's
conditional LoRA on its compression tokens).
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..model import hf_adapter
from . import restore
from ..kernels.cuda_graphs import GraphRunner, available as cuda_available
from ..errors import LongctxError, SessionError
from ..kernels.kv_cache import StaticCache
from .progress import progress_bar

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """What a strategy supports; the engine and integrations read these instead of names."""

    batching: bool = True  # several rows with left padding in one forward
    cpu: bool = True
    rewind: bool = True  # can drop cached tokens past a length (prefix reuse across chat turns)
    save: bool = True  # state saves to / restores from disk
    unbounded: bool = False  # streams past its window by evicting (no prompt-length limit)
    compact: bool = False  # states offer compact_tail (a memory may replace a finished turn by key/value slots)
    splice: bool = False  # states offer kv_span / splice anywhere in the cache (e.g. CCM's merged memory)


class StrategyOptions(BaseModel):
    """Base of every strategy's options model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: options that change only how fast a state runs, never what it holds: left out of :meth:`Strategy.identity`,
    #: so a session saved with one setting restores under another
    speed_only: ClassVar[frozenset[str]] = frozenset()


class FastDecodeOptions(StrategyOptions):
    """Options of strategies with a growing cache that decode through :class:`~longctx_llm.kernels.kv_cache.StaticCache`."""

    speed_only: ClassVar[frozenset[str]] = frozenset({"static_cache", "cuda_graphs", "compile", "lookahead"})

    static_cache: Optional[bool] = Field(
        None,
        description="Preallocated key/value cache (a decode step writes one slot, copies nothing). "
        "Default: on with a CUDA device, off on CPU.",
    )
    cuda_graphs: Optional[bool] = Field(
        None, description="Replay decode steps from CUDA graphs (needs static_cache). Default: on with a CUDA device."
    )
    compile: bool = Field(
        False,
        description="torch.compile the graph-replayed decode step (fuses the model's small kernels; the first steps "
        "of a session wait for the compiler, a minute or more on an 8B model). Needs cuda_graphs.",
    )
    lookahead: Optional[bool] = Field(
        None,
        description="Queue each decode step before the host reads the token sampled last, so turning tokens into "
        "text (and the LangChain / LlamaIndex / server layers) overlaps the GPU's next step; the one token fed ahead "
        "is taken back when the reply ends. Needs static_cache. Default: on with CUDA graphs.",
    )


class Strategy(ABC):
    """A long-prompt strategy plugin.

    Subclasses set ``name``, ``Options`` (a :class:`StrategyOptions` subclass) and ``capabilities``, and
    implement :meth:`context_window` and :meth:`new_state`. They are registered under the entry-point group
    ``longctx_llm.strategies``.
    """

    name: ClassVar[str]
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, options: Optional[StrategyOptions] = None, **kwargs: Any):
        if options is None:
            options = self.Options(**kwargs)
        elif kwargs:
            raise TypeError("pass either an options object or keyword options, not both")
        self.options = options

    def validate(self, info: hf_adapter.ModelInfo) -> None:
        """Raise :class:`~longctx_llm.errors.ConfigError` or ``UnsupportedModelError`` if unusable on a model."""

    def prepare(self, model) -> None:
        """Load and check what the strategy needs on a loaded model (trained weights), before any state is made;
        errors here (a missing or mismatched compressor) reach the user before any work starts."""

    @abstractmethod
    def context_window(self, info: hf_adapter.ModelInfo) -> Optional[int]:
        """Tokens the model can attend to under this strategy (None: unbounded, e.g. streaming)."""

    def attention_span(self, info: hf_adapter.ModelInfo) -> int:
        """Tokens the model actually attends to at once: the window, or for unbounded strategies what they keep
        (streaming: sink + window). What prompt packers (LlamaIndex's PromptHelper) should plan with."""
        window = self.context_window(info)
        return int(window if window is not None else info.pretraining_length)

    @abstractmethod
    def new_state(self, model, batch_size: int = 1) -> "StrategyState":
        """A fresh per-sequence state for a loaded model (:class:`~longctx_llm.model.loading.LoadedModel`)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.options.model_dump()}

    def identity(self) -> dict[str, Any]:
        """:meth:`describe` without the speed-only options: what a saved session must match to be restored."""
        skip = type(self.options).speed_only
        return {k: v for k, v in self.describe().items() if k not in skip}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.model_dump().items())
        return f"{type(self).__name__}({opts})"


class StrategyState(ABC):
    """Per-sequence model-side state of a strategy."""

    #: tokens fed so far (columns, padding included)
    seen: int = 0

    @property
    def cache_entries(self) -> int:
        """Positions the model attends to now (a cache that evicts or compresses holds fewer than it was fed); what
        ``longctx eval gap`` compares a compressing pipeline against (the same number of raw tokens)."""
        return self.seen

    @abstractmethod
    def forward(
        self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *, all_logits: bool = False
    ) -> torch.Tensor:
        """Feed new tokens (B, T); return logits (B, T, V) if ``all_logits`` else (B, 1, V) for the last one."""

    def rewind(self, length: int) -> None:
        raise LongctxError(f"{type(self).__name__} cannot rewind its cache")

    def reserve(self, tokens: int) -> None:
        """A hint that the sequence will hold ``tokens`` tokens (prompt + reply); states that preallocate use it."""

    #: the generation loop may feed a sampled token before the host reads it (overlapping the host's per-token work
    #: with the GPU's next step) and rewind that one token when the reply ends: for states whose one-token rewind is
    #: cheap and exact (see :func:`longctx_llm.runtime.generation._step_ahead`)
    lookahead: bool = False

    #: whether memories may edit the cache (:meth:`KVCacheState.compact_tail` and friends)
    editable: bool = False

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        raise SessionError(f"{type(self).__name__} does not support saving")

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        raise SessionError(f"{type(self).__name__} does not support restoring")


def cuda_graphs_available(model) -> bool:
    """Whether a loaded model (:class:`~longctx_llm.model.loading.LoadedModel`) runs where CUDA graphs can replay."""
    return cuda_available(torch.device(model.device))


def fast_decode_defaults(model, static_cache: Optional[bool], cuda_graphs: Optional[bool]) -> tuple[bool, bool]:
    """Resolve a growing-cache strategy's ``static_cache`` / ``cuda_graphs`` options (None = on exactly on CUDA)."""
    on_cuda = cuda_graphs_available(model)
    static = on_cuda if static_cache is None else bool(static_cache)
    graphs = (on_cuda and static) if cuda_graphs is None else bool(cuda_graphs)
    return static, graphs


def _step(model, cache, attention, extra: dict, st: dict[str, torch.Tensor], keep: int, hooks=None) -> torch.Tensor:
    """One forward of a graph-replayed step, reading its inputs only from ``st`` (see :mod:`.cuda_graphs`)."""
    ctx = hf_adapter.AttentionContext(q_positions=st["q_positions"], attention=attention, extra=dict(extra))
    return hf_adapter.forward(model, st["input_ids"], position_ids=st["position_ids"], cache=cache, ctx=ctx,
                              logits_to_keep=keep, hooks=hooks)


_COMPILED_STEP = None


def _compiled_step():
    """:func:`_step` under ``torch.compile`` (made once per process; the compiler caches per shapes and guards)."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_step, dynamic=False)
    return _COMPILED_STEP


class KVCacheState(StrategyState):
    """A KV-cache state with chunked prefill and left-padding support; override the seams, not ``forward``.

    ``static_cache``: keep keys/values in a preallocated :class:`~longctx_llm.kernels.kv_cache.StaticCache` instead of
    transformers' ``DynamicCache``; a one-token decode step is then a *fixed* step (it writes one slot and attends
    through a device-side valid length), which ``cuda_graphs`` replays from a CUDA graph. The attention function
    must handle ``extra["decode"]`` (the core's plain attention and DCA's do).
    """

    #: longest piece fed in one forward during prefill; bounds activation memory (None: no chunking)
    prefill_chunk_size: Optional[int] = 2048

    def __init__(
        self,
        model,
        batch_size: int = 1,
        prefill_chunk_size: Optional[int] = None,
        *,
        cuda_graphs: bool = False,
        static_cache: bool = False,
        compile_steps: bool = False,
        lookahead: Optional[bool] = None,
    ):
        self.model = model  # LoadedModel
        self.batch_size = batch_size
        if prefill_chunk_size is not None:
            self.prefill_chunk_size = prefill_chunk_size
        #: replay forwards that ``graph_key`` names from CUDA graphs (only on a CUDA device)
        self.cuda_graphs = bool(cuda_graphs) and cuda_graphs_available(model)
        self.static_cache = bool(static_cache)
        #: run graph-captured decode steps through torch.compile (fuses the model's small kernels)
        self.compile_steps = bool(compile_steps) and self.cuda_graphs
        self._graphs: Optional[GraphRunner] = None
        self._graph_generation = 0
        self._first: Optional[torch.Tensor] = None  # (B,) first real key per row when padding is a left prefix
        self._fixed = False  # the forward being run is a fixed decode step
        self.cache = self.make_cache()
        #: the CUDA fast path (preallocated cache, graph-replayed steps): rewinding a token is a length change
        self.lookahead = (self.cuda_graphs if lookahead is None else bool(lookahead)) and isinstance(
            self.cache, StaticCache)
        self.seen = 0
        self.padding: Optional[torch.Tensor] = None  # (B, seen) bool, None while no row has padding
        self.real_tokens = torch.zeros(batch_size, dtype=torch.long, device=model.device)  # (B,)

    # ---- seams -------------------------------------------------------------------------------------------
    def make_cache(self):
        if self.static_cache:
            layers = self.model.model.config.get_text_config().num_hidden_layers
            return StaticCache(layers, self.batch_size, self.model.device)
        return hf_adapter.new_dynamic_cache(self.model.model)

    def reserve(self, tokens: int) -> None:
        if isinstance(self.cache, StaticCache):
            self.cache.reserve(tokens)

    def logical_positions(self, new_tokens: int, new_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """(B, T) positions of ``new_tokens`` new tokens in the sequence attended to (default: the text).

        Called once per forward piece, before the model runs. Strategies that assign positions inside their cache
        override it (StreamingLLM: the next cache slots, arXiv 2309.17453 §3.2).
        """
        device = self.real_tokens.device
        if new_mask is None:
            return self.real_tokens[:, None] + torch.arange(new_tokens, device=device)[None, :]
        return (self.real_tokens[:, None] + new_mask.long().cumsum(-1) - 1).clamp_min(0)

    def rope_positions(self, logical: torch.Tensor) -> torch.Tensor:
        """Positions fed to RoPE for new tokens at ``logical`` (B, T) positions."""
        return logical

    def attention(self) -> Optional[hf_adapter.AttentionFn]:
        """The attention function (None: plain causal attention)."""
        return None

    def attention_extra(self) -> dict[str, Any]:
        return {}

    def graph_key(self, new_tokens: int, all_logits: bool) -> Optional[tuple]:
        """A key if this forward (planned already: called after ``logical_positions``) may replay a CUDA graph.

        Only for forwards that are the same GPU program every time (same shapes; every tensor read or written at a
        fixed address; no Python decision inside the forward that changes between calls): see
        :mod:`longctx_llm.kernels.cuda_graphs`. Default: a fixed decode step of a static cache (see the class docstring).
        """
        return ("decode", all_logits) if self._fixed else None

    def _fixed_step(self, new_tokens: int, new_mask: Optional[torch.Tensor]) -> bool:
        """Whether this forward can be a fixed decode step: static cache, one real token per row, and padding (if
        any) a left prefix of every row (then ``_first`` says where each row's keys start)."""
        if not isinstance(self.cache, StaticCache) or new_tokens != 1 or new_mask is not None:
            return False
        if self.padding is None:
            return True
        if self._first is None:
            first = (self.padding.long().cumsum(-1) == 0).sum(-1)  # (B,) leading padding columns
            if int(self.padding.long().sum()) != int((self.padding.shape[1] - first).sum()):
                return False  # holes after the first real token: only the general (masked) path knows them
            self._first = first.to(torch.int32)
        return True

    # ---- the one forward ----------------------------------------------------------------------------------
    def _chunk(self, ids, mask, all_logits: bool, embeds=None, hooks=None) -> torch.Tensor:
        # One forward at a time per loaded model: sessions in other threads share it, and a CUDA graph capture must
        # not see another thread's kernels (they would invalidate it). Per piece, so long prefills interleave.
        lock = getattr(self.model, "lock", None)
        with lock if lock is not None else contextlib.nullcontext():
            return self._chunk_locked(ids, mask, all_logits, embeds, hooks)

    def _chunk_locked(self, ids, mask, all_logits: bool, embeds=None, hooks=None) -> torch.Tensor:
        B, T = (ids if ids is not None else embeds).shape[:2]
        device = (ids if ids is not None else embeds).device
        new_mask = mask.bool() if mask is not None else None
        if new_mask is not None and bool(new_mask.all()):
            new_mask = None
        logical = self.logical_positions(T, new_mask)
        if self.padding is None and new_mask is not None:
            self.padding = torch.ones(B, self.seen, dtype=torch.bool, device=device)
        if self.padding is not None:
            piece = new_mask if new_mask is not None else torch.ones(B, T, dtype=torch.bool, device=device)
            key_padding = torch.cat([self.padding, piece], dim=1)
        else:
            key_padding = None
        rope = self.rope_positions(logical)
        static = isinstance(self.cache, StaticCache)
        self._fixed = fixed = self._fixed_step(T, new_mask)
        if static:
            self.cache.begin(T, fixed=fixed, first=self._first if key_padding is not None else None)
        replayable = hooks is None or hooks.replay_key is not None  # hooks that are the same program every call
        plain = (key_padding is None or fixed) and embeds is None and replayable
        key = self.graph_key(T, all_logits) if self.cuda_graphs and plain else None
        if key is not None and hooks is not None:
            key = (key, hooks.replay_key)
        try:
            if key is not None:
                logits = self._graphed_forward(key, ids, rope, logical, all_logits, hooks)
            else:
                extra = self.attention_extra()
                if fixed:
                    extra = {**extra, "decode": self.cache.view}
                ctx = hf_adapter.AttentionContext(
                    q_positions=logical, key_padding=None if fixed else key_padding, attention=self.attention(),
                    extra=extra,
                )
                logits = hf_adapter.forward(
                    self.model.model, ids, position_ids=rope, cache=self.cache, ctx=ctx,
                    logits_to_keep=0 if all_logits else 1, inputs_embeds=embeds, hooks=hooks,
                )
        finally:
            self._fixed = False
        if static:
            self.cache.commit(T)
        if new_mask is not None:
            self._first = None
        self.padding = key_padding
        self.real_tokens = self.real_tokens + (T if new_mask is None else new_mask.long().sum(-1))
        self.seen += T
        return logits

    def _graphed_forward(self, key, ids, rope, logical, all_logits: bool, hooks=None) -> torch.Tensor:
        runner = self._graphs
        generation = getattr(self.cache, "generation", 0)
        if runner is None or runner.owner is not self.cache or self._graph_generation != generation:
            # a new cache (restored session) or grown buffers: the captured kernels point at memory that is gone
            runner = self._graphs = GraphRunner(self.cache)
            self._graph_generation = generation
        attention, extra = self.attention(), self.attention_extra()
        if self._fixed:
            extra = {**extra, "decode": self.cache.view}
        model, cache = self.model.model, self.cache
        keep = 0 if all_logits else 1
        compiled = _compiled_step() if self.compile_steps and self._fixed and hooks is None else None

        def forward(st: dict[str, torch.Tensor]) -> torch.Tensor:
            if compiled is not None and self.compile_steps:
                try:
                    return compiled(model, cache, attention, extra, st, keep)
                except Exception as exc:  # a model or kernel the compiler cannot take: eager steps from now on
                    logger.warning("torch.compile of the decode step failed (%s: %s); running it uncompiled",
                                   type(exc).__name__, str(exc)[:500])
                    self.compile_steps = False
            return _step(model, cache, attention, extra, st, keep, hooks)

        return runner.run(key, {"input_ids": ids, "position_ids": rope, "q_positions": logical}, forward)

    @torch.inference_mode()
    def forward(self, input_ids, attention_mask=None, *, all_logits=False, inputs_embeds=None, hooks=None):
        """Feed (B, T) token ids, or (B, T, H) ``inputs_embeds``, with optional per-call ``hooks``."""
        if input_ids is not None:
            input_ids = input_ids.to(self.model.device)
        else:
            inputs_embeds = inputs_embeds.to(self.model.device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.model.device)
        B, T = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        if B != self.batch_size:
            raise LongctxError(f"state was made for batch size {self.batch_size}, got {B} rows")
        step = self.prefill_chunk_size or T
        if T <= step or hooks is not None:  # hooks may hold tensors for the whole call: never split it
            return self._chunk(input_ids, attention_mask, all_logits, inputs_embeds, hooks)
        outs = []
        with progress_bar(total=T, desc="prefill", unit="tok", enabled=T >= 8 * step) as bar:
            for start in range(0, T, step):
                sl = slice(start, start + step)
                m = attention_mask[:, sl] if attention_mask is not None else None
                ids = input_ids[:, sl] if input_ids is not None else None
                emb = inputs_embeds[:, sl] if inputs_embeds is not None else None
                out = self._chunk(ids, m, all_logits, emb, hooks)
                if all_logits:
                    outs.append(out)
                bar.update(out.shape[1] if all_logits else min(step, T - start))
        return torch.cat(outs, dim=1) if all_logits else out

    def rewind(self, length: int) -> None:
        if not 0 <= length <= self.seen:
            raise LongctxError(f"cannot rewind to {length}: the cache holds {self.seen} tokens")
        hf_adapter.crop_cache(self.cache, length)
        self.seen = length
        self._first = None
        if self.padding is not None:
            self.padding = self.padding[:, :length]
            self.real_tokens = self.padding.long().sum(-1)
        else:
            self.real_tokens = torch.full_like(self.real_tokens, length)

    # ---- editing the cache (memories that keep key/value slots: CCM) ------------------------------------------
    @property
    def editable(self) -> bool:
        """True when keys sit at RoPE position = cache index (the positions and RoPE seams are the defaults) and no
        row is padded: then removing entries and re-rotating the later keys keeps every distance right."""
        # bound methods: an instance may carry another state's seam (a composed strategy), not only a subclass
        plain = all(
            getattr(getattr(self, m), "__func__", None) is getattr(KVCacheState, m)
            for m in ("logical_positions", "rope_positions")
        )
        return plain and self.padding is None and self.model.info.has_rope

    def _require_editable(self, what: str) -> None:
        if not self.editable:
            raise LongctxError(
                f"{type(self).__name__} cannot {what}: its keys are not stored at their cache index "
                "(the strategy sets its own positions), so a memory cannot edit its cache"
            )

    def kv_span(self, start: int, end: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (keys, values) (B, H_kv, end - start, D) of cache entries [start, end) (copies)."""
        self._require_editable("read cache spans")
        if not 0 <= start <= end <= self.seen:
            raise LongctxError(f"kv_span({start}, {end}): the cache holds {self.seen} entries")
        return [(k[..., start:end, :].clone(), v[..., start:end, :].clone()) for k, v in self._layers()]

    def _layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return hf_adapter.cache_kv(self.cache)

    def rotate_keys(self, kv: list[tuple[torch.Tensor, torch.Tensor]], delta: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``kv`` with keys moved by ``delta`` RoPE positions (float32 rotation, cast back)."""
        if delta == 0:
            return kv
        rot = hf_adapter.Rotary(inv_freq=self.model.rotary.inv_freq.to(self.model.device))
        d = torch.tensor(delta, device=self.model.device)
        return [(rot.rotate(k.float(), d).to(k.dtype), v) for k, v in kv]

    def splice(self, start: int, end: int, kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Replace entries [start, end) by ``kv`` (m entries per layer, keys rotated at positions start..start+m-1).

        Entries after ``end`` move to start + m and their keys are re-rotated by start + m - end, so every query
        that comes later sees them at their new cache index.
        """
        self._require_editable("splice its cache")
        if not 0 <= start <= end <= self.seen:
            raise LongctxError(f"splice({start}, {end}): the cache holds {self.seen} entries")
        layers = self._layers()
        if not kv:  # nothing inserted: zero entries per layer
            kv = [(k[..., :0, :], v[..., :0, :]) for k, v in layers]
        if len(kv) != len(layers):
            raise LongctxError(f"splice: got key/values for {len(kv)} layers, the cache has {len(layers)}")
        m = kv[0][0].shape[-2]
        shift = start + m - end
        for i, ((k, v), (nk, nv)) in enumerate(zip(layers, kv)):  # one layer at a time: one layer's copy at most
            tail_k, tail_v = k[..., end:, :], v[..., end:, :]
            if shift and tail_k.shape[-2]:
                tail_k = self.rotate_keys([(tail_k, tail_v)], shift)[0][0]
            hf_adapter.set_cache_kv(  # every layer is replaced, to the same length, before the next forward
                self.cache, i,
                torch.cat([k[..., :start, :], nk.to(k.dtype), tail_k], dim=-2),
                torch.cat([v[..., :start, :], nv.to(v.dtype), tail_v], dim=-2),
            )
        self.seen += shift
        self.real_tokens = self.real_tokens + shift
        self._graphs = None

    def compact_tail(self, drop: int, keep: int) -> None:
        """Of the newest ``drop + keep`` entries, remove the first ``drop``; the newest ``keep`` move back by
        ``drop`` positions (CCM: a finished turn gives way to its compression slots)."""
        end = self.seen - keep
        kv = self.rotate_keys(self.kv_span(end, self.seen), -drop)
        self.splice(end - drop, self.seen, kv)

    def state_dict(self):
        tensors = dict(hf_adapter.cache_tensors(self.cache))
        if self.padding is not None:
            tensors["padding"] = self.padding
        tensors["real_tokens"] = self.real_tokens
        return tensors, {"seen": self.seen, "batch_size": self.batch_size}

    def load_state_dict(self, tensors, meta):
        device = self.model.device
        held = restore.cache_length(tensors)  # the counters are checked against the cache before anything is built
        seen = restore.meta_int(meta, "seen", held, held, "strategy", f"its cache holds {held} entries")
        real = restore.check_positions(tensors.get("real_tokens"), self.batch_size, seen, "strategy")
        if self.static_cache:
            self.cache = self.make_cache()
            self.cache.load(tensors)
        else:
            self.cache = hf_adapter.load_cache_tensors(self.model.model, tensors, device)
        self._first = None
        self.seen = seen
        self.padding = tensors["padding"].to(device) if "padding" in tensors else None
        self.real_tokens = real.to(device)
