"""What a running generation hands back: :class:`TextStream` (text deltas, then the completion) and
:func:`out_of_memory`, which turns a device out-of-memory error into a :class:`ResourceError` the next request
survives."""

from __future__ import annotations

from typing import Iterator, Optional

import torch

from ..errors import ResourceError
from .generation import Completion, Delta


def out_of_memory(gen: Iterator[Delta], loaded, tokens: int, on_oom=None) -> Iterator[Delta]:
    """Pass ``gen`` through; a device out-of-memory error becomes a :class:`ResourceError` after the allocator's
    cache is emptied and ``on_oom`` (e.g. dropping a session's half-updated cache) ran, so the next request runs."""
    device = loaded.device
    try:
        return (yield from gen)
    except torch.OutOfMemoryError as e:
        if on_oom is not None:
            on_oom()
        if torch.cuda.is_available():
            # under the model's lock: another session may be capturing a CUDA graph (always inside a forward, under
            # this lock), and the allocator must not be emptied during a capture
            with loaded.lock:
                torch.cuda.empty_cache()
        raise ResourceError(
            f"out of memory on {device} for a {tokens}-token prompt ({str(e).splitlines()[0][:160]}); use a strategy "
            "with a bounded cache (streaming, rcc), a shorter prompt or a smaller dtype"
        ) from None


class TextStream:
    """An iterator of text deltas; ``completion`` is set once it is exhausted."""

    def __init__(self, gen: Iterator[Delta], on_done=None, on_close=None):
        self._gen = gen
        self._on_done = on_done
        self._on_close = on_close
        self.completion: Optional[Completion] = None
        self._closed = False

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        if self._closed:
            raise StopIteration
        try:
            while True:
                d = next(self._gen)
                if d.text:
                    return d.text
        except StopIteration as stop:
            self.completion = stop.value[0]
            self._finish(ok=True)
            raise StopIteration from None
        except BaseException:
            self._finish(ok=False)
            raise

    def _finish(self, ok: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if ok and self._on_done is not None:
                self._on_done(self.completion)
        finally:
            if self._on_close is not None:
                self._on_close()

    def close(self) -> None:
        """Stop early (releases the session; what was generated stays in its cache)."""
        self._gen.close()
        self._finish(ok=False)

    def __del__(self):
        if not self._closed and self._on_close is not None:
            try:
                self._on_close()
            except Exception:  # noqa: BLE001 - never raise from a finaliser
                pass

    def text(self) -> str:
        """Drain and return the whole text."""
        return "".join(self)
