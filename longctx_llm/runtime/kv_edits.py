"""Editing a KV-cache state between forwards: rewind, the memories' editing seam, saving and restoring.

Memories that keep past turns as key/value slots (CCM) edit the cache through three methods every editable state
offers: :meth:`KVCacheEdits.kv_span` (read entries), :meth:`KVCacheEdits.splice` (replace a span of entries, moving
the later ones, their keys re-rotated) and :meth:`KVCacheEdits.compact_tail` (drop a span just before the newest
entries). Whether a state is editable (its keys sit at RoPE position = cache index) is
:attr:`~.kv_state.KVCacheState.editable`, which knows the forward's positions seams.

:class:`KVCacheEdits` is the base of :class:`~.kv_state.KVCacheState` (the forward); it reads the state's ``cache``,
``seen``, ``padding``, ``real_tokens``, ``model``, ``batch_size`` and ``static_cache``.
"""

from __future__ import annotations

import torch

from ..errors import LongctxError
from ..model import hf_adapter
from . import restore
from .strategy import StrategyState


class KVCacheEdits(StrategyState):
    """What changes a KV cache besides a forward: :meth:`rewind`, :meth:`kv_span`, :meth:`splice`,
    :meth:`compact_tail`, :meth:`state_dict` / :meth:`load_state_dict`."""

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
