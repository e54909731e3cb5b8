"""Reading long text for evaluations: plain text, or JSON lines with a ``text`` field (optionally gzipped)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from .errors import InputError


def read_text(path: str | Path, separator: str = "\n\n") -> str:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--text: file {str(p)!r} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    name = p.name[:-3] if p.suffix == ".gz" else p.name
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            if name.endswith(".jsonl"):
                return separator.join(json.loads(line)["text"] for line in f if line.strip())
            return f.read()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as e:
        raise InputError(f"--text: cannot read {str(p)!r}: {e}") from e
