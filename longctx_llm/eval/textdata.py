"""Reading long text for evaluations: plain text, or JSON lines with a ``text`` field (optionally gzipped)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ..errors import InputError


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


def read_documents(path: str | Path) -> list[str]:
    """The documents of a text file: one per line of a .jsonl[.gz] file (its ``text``), or the whole .txt file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--data: file {str(p)!r} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    name = p.name[:-3] if p.suffix == ".gz" else p.name
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            if name.endswith(".jsonl"):
                return [json.loads(line)["text"] for line in f if line.strip()]
            return [f.read()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise InputError(f"--data: cannot read {str(p)!r}: {e}") from e


#: every ``HOLDOUT_EVERY``-th document (index % HOLDOUT_EVERY == HOLDOUT_EVERY - 1) is held out of adapter training;
#: ``longctx eval`` figures for trained adapters are measured on these documents
HOLDOUT_EVERY = 10


def split_documents(docs: list[str], every: int = HOLDOUT_EVERY) -> tuple[list[str], list[str]]:
    """(train, held out): a deterministic split by document index. A one-document file is split by characters
    instead (its last 1/every is held out), so a single long .txt file still has held-out text."""
    if len(docs) == 1:
        text = docs[0]
        cut = len(text) - len(text) // every
        return [text[:cut]], [text[cut:]]
    train = [d for i, d in enumerate(docs) if i % every != every - 1]
    held = [d for i, d in enumerate(docs) if i % every == every - 1]
    return train, held


def split_text(path: str, split: str = "all") -> str:
    """The text of ``path``: all of it, or the adapter trainers' held-out / train part (``--split``)."""
    if split == "all":
        return read_text(path)
    train, held = split_documents(read_documents(path))
    return "\n\n".join(held if split == "heldout" else train)
