"""Progress bars for model loading and long prefills (tqdm, shown on a terminal only)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True) -> Iterator[object]:
    """A tqdm bar when ``enabled`` and stderr is a terminal and LONGCTX_PROGRESS != 0; else a no-op."""
    show = enabled and os.environ.get("LONGCTX_PROGRESS", "1") != "0"
    if not show:
        yield _NullBar()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is optional
        yield _NullBar()
        return
    bar = tqdm(total=total, desc=desc, unit=unit, disable=None, leave=False)
    try:
        yield bar
    finally:
        bar.close()
