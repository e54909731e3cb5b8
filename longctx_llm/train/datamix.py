"""Training text from several files, mixed by weight: what ``longctx train --data`` reads.

``--data`` takes one text file, several (``--data a.jsonl.gz --data b.jsonl.gz --data-weights 0.3,0.7``), or one
mix file (YAML, loaded safely)::

    sources:
      - file: pydocs-3.11.jsonl.gz      # relative to the mix file
        weight: 0.25
      - file: general-en.jsonl.gz
        weight: 0.75
        group_by: package               # groups: the first part of each document's "source" field
        size_exponent: 0.5              # groups drawn in proportion to tokens ** 0.5 (1: by size, 0: equally)

Each file keeps its own held-out split (every 10th document, :data:`textdata.HOLDOUT_EVERY`), the same documents
``longctx eval --split heldout`` reads from that file, before any grouping. A sample is one contiguous span of one
group, the group drawn by weight; without ``--data-weights`` several files are drawn in proportion to their
training tokens (as if concatenated).

Reading and checking the files (:func:`read_mix`) needs no model, so bad data is refused before a model loads;
:func:`tokenize_mix` then makes the token streams.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ..errors import InputError
from ..eval.textdata import HOLDOUT_EVERY

#: what ``group_by`` may name: how a document's ``source`` field maps to its group
GROUP_KEYS = ("package", "source")
MIX_SUFFIXES = (".yaml", ".yml")


@dataclass
class SourceSpec:
    """One file of a mix: its weight, and how its documents are grouped for sampling."""

    file: Path
    weight: Optional[float] = None  # None: by training tokens
    group_by: Optional[str] = None
    size_exponent: float = 1.0


@dataclass
class SourceDocs:
    spec: SourceSpec
    train: list[tuple[str, str]]  # (group, text)
    held: list[tuple[str, str]]
    documents: int
    sha256: str

    @property
    def label(self) -> str:
        return source_label(self.spec.file)


@dataclass
class Part:
    """One group of one file: its token stream and its share of the samples."""

    name: str
    stream: Any  # TokenStream
    weight: float


def source_label(path: Path) -> str:
    """``general-en.jsonl.gz`` -> ``general-en``."""
    name = Path(path).name
    for suffix in (".gz", ".jsonl", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _positive(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise InputError(f"{what}: must be a positive number, got {value!r}")
    return v


def parse_data(data: Sequence[str], weights: Optional[str] = None) -> list[SourceSpec]:
    """``--data`` values (files, or one mix file) and ``--data-weights`` into source specs."""
    data = [data] if isinstance(data, str) else list(data or [])
    if not data:
        raise InputError("--data: give a text file (.txt, .jsonl, .jsonl.gz) or a mix file (.yaml)")
    mixes = [d for d in data if str(d).endswith(MIX_SUFFIXES)]
    if mixes:
        if len(data) > 1 or weights:
            raise InputError(f"--data: a mix file ({mixes[0]}) is the only --data, without --data-weights")
        return read_mix_file(Path(mixes[0]).expanduser())
    specs = [SourceSpec(Path(d).expanduser()) for d in data]
    if weights is not None:
        parts = [w for w in str(weights).split(",") if w.strip()]
        if len(parts) != len(specs):
            raise InputError(
                f"--data-weights {weights!r}: {len(parts)} weight(s) for {len(specs)} --data file(s); give one per file"
            )
        for spec, w in zip(specs, parts):
            spec.weight = _positive(w, "--data-weights")
    if len({s.file.resolve() for s in specs}) != len(specs):
        raise InputError(f"--data: a file is named twice in {[str(s.file) for s in specs]}")
    return specs


def read_mix_file(path: Path) -> list[SourceSpec]:
    import yaml

    if not path.is_file():
        raise InputError(f"--data: mix file {str(path)!r} does not exist")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise InputError(f"--data: cannot read mix file {str(path)!r}: {e}") from e
    where = f"mix file {str(path)!r}"
    if not isinstance(doc, dict) or set(doc) != {"sources"} or not isinstance(doc["sources"], list) or not doc["sources"]:
        raise InputError(f"{where}: expected a mapping with one key, 'sources': a non-empty list of files")
    specs = []
    allowed = {"file", "weight", "group_by", "size_exponent"}
    for i, entry in enumerate(doc["sources"]):
        at = f"{where}, sources[{i}]"
        if not isinstance(entry, dict) or "file" not in entry:
            raise InputError(f"{at}: expected a mapping with 'file' (and 'weight', 'group_by', 'size_exponent')")
        unknown = sorted(set(entry) - allowed)
        if unknown:
            raise InputError(f"{at}: unknown key(s) {unknown}; valid: {sorted(allowed)}")
        file = Path(str(entry["file"])).expanduser()
        if not file.is_absolute():
            file = path.parent / file
        group_by = entry.get("group_by")
        if group_by is not None and group_by not in GROUP_KEYS:
            raise InputError(f"{at}: group_by {group_by!r} is not one of {list(GROUP_KEYS)}")
        exponent = entry.get("size_exponent", 1.0)
        try:
            exponent = float(exponent)
        except (TypeError, ValueError):
            raise InputError(f"{at}: size_exponent: expected a number in [0, 1], got {exponent!r}") from None
        if not 0.0 <= exponent <= 1.0:
            raise InputError(f"{at}: size_exponent: expected a number in [0, 1], got {exponent!r}")
        weight = entry.get("weight")
        specs.append(SourceSpec(file, None if weight is None else _positive(weight, f"{at}: weight"), group_by, exponent))
    if len({s.file.resolve() for s in specs}) != len(specs):
        raise InputError(f"{where}: a file is named twice")
    if len({s.weight is None for s in specs}) > 1:
        raise InputError(f"{where}: give a weight to every source or to none")
    return specs


def _group(record: dict, key: Optional[str]) -> str:
    if key is None:
        return ""
    src = record.get("source")
    if not isinstance(src, str) or not src:
        return "(no source)"
    return src.split("/", 1)[0] if key == "package" else src


def read_records(path: Path) -> list[dict]:
    """The documents of a file as ``{"text": ..., "source": ...}``, checked: a clear error for each kind of bad file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--data: file {str(p)!r} does not exist")
    name = p.name[:-3] if p.name.endswith(".gz") else p.name
    opener = gzip.open if p.name.endswith(".gz") else open
    out: list[dict] = []
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            if not name.endswith(".jsonl"):
                text = f.read()
                if text.strip():
                    out.append({"text": text})
            else:
                for n, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise InputError(f"--data {str(p)!r}, line {n}: not JSON ({e.msg})") from None
                    if not isinstance(rec, dict) or "text" not in rec:
                        raise InputError(f"--data {str(p)!r}, line {n}: expected an object with a 'text' field")
                    if not isinstance(rec["text"], str):
                        raise InputError(
                            f"--data {str(p)!r}, line {n}: field 'text' must be a string, got {type(rec['text']).__name__}"
                        )
                    if rec["text"].strip():
                        out.append(rec)
    except (OSError, UnicodeDecodeError, EOFError) as e:
        raise InputError(f"--data: cannot read {str(p)!r}: {e}") from e
    if not out:
        raise InputError(f"--data {str(p)!r}: no text in it")
    return out


def split_records(records: list[dict], every: int = HOLDOUT_EVERY) -> tuple[list[dict], list[dict]]:
    """Every ``every``-th document held out (as :func:`textdata.split_documents`; one document: its last 1/every)."""
    if len(records) == 1:
        text = records[0]["text"]
        cut = len(text) - len(text) // every
        return [{**records[0], "text": text[:cut]}], [{**records[0], "text": text[cut:]}]
    return ([r for i, r in enumerate(records) if i % every != every - 1],
            [r for i, r in enumerate(records) if i % every == every - 1])


def read_mix(specs: list[SourceSpec], every: int = HOLDOUT_EVERY) -> list[SourceDocs]:
    """Read and check every file of the mix (no model needed)."""
    from ..model import adapters as files

    out = []
    for spec in specs:
        records = read_records(spec.file)
        train, held = split_records(records, every)
        if not held:
            raise InputError(
                f"--data {str(spec.file)!r}: {len(records)} document(s) leave none held out (every {every}th is held "
                f"out); give at least {every} documents, or one long document"
            )
        out.append(SourceDocs(
            spec,
            [(_group(r, spec.group_by), r["text"]) for r in train],
            [(_group(r, spec.group_by), r["text"]) for r in held],
            len(records),
            files.sha256_file(spec.file),
        ))
    labels = [s.label for s in out]
    if len(set(labels)) != len(labels):
        raise InputError(f"--data: two files share the name {labels}; rename one")
    return out


class TokenStream:
    """Token ids of documents joined with a separator token; samples contiguous spans."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids  # (N,) long

    def __len__(self) -> int:
        return int(self.ids.numel())

    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(batch, length) spans at random offsets."""
        if length >= len(self):
            raise InputError(f"the training text has {len(self)} tokens, fewer than one sample of {length}")
        starts = torch.randint(0, len(self) - length, (batch,), generator=generator)
        return torch.stack([self.ids[s : s + length] for s in starts.tolist()])

    def fixed(self, count: int, length: int, seed: int = 1234) -> torch.Tensor:
        """``count`` spans at offsets fixed by ``seed`` (held-out evaluation: the same spans every time)."""
        g = torch.Generator().manual_seed(seed)
        return self.sample(count, length, g)


@dataclass
class MixedStream:
    """Samples contiguous spans, each from one part drawn by weight (one part: exactly a :class:`TokenStream`)."""

    parts: list[Part]
    label: str = "mix"
    _probs: Optional[torch.Tensor] = field(default=None, repr=False)

    def __len__(self) -> int:
        return sum(len(p.stream) for p in self.parts)

    def sample(self, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
        if len(self.parts) == 1:
            return self.parts[0].stream.sample(batch, length, generator)
        usable = [p for p in self.parts if len(p.stream) > length]
        if not usable:
            raise InputError(f"the {self.label} text has no part longer than one sample of {length} tokens")
        probs = torch.tensor([p.weight for p in usable], dtype=torch.double)
        picks = torch.multinomial(probs, batch, replacement=True, generator=generator).tolist()
        return torch.stack([usable[i].stream.sample(1, length, generator)[0] for i in picks])

    def fixed(self, count: int, length: int, seed: int = 1234) -> torch.Tensor:
        return self.sample(count, length, torch.Generator().manual_seed(seed))

    @property
    def ids(self) -> torch.Tensor:
        """All token ids, parts one after another (for code that reads a stream whole)."""
        return torch.cat([p.stream.ids for p in self.parts])


def _streams(docs: list[tuple[str, str]], tokenizer) -> dict[str, torch.Tensor]:
    """Token ids per group: the group's documents joined with the end-of-text token."""
    sep = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    groups: dict[str, list[int]] = {}
    for start in range(0, len(docs), 256):  # batches: a fast tokenizer encodes them on every core
        part = docs[start : start + 256]
        encoded = tokenizer([text for _, text in part], add_special_tokens=False)["input_ids"]
        for (group, _), ids in zip(part, encoded):
            out = groups.setdefault(group, [])
            out.extend(ids)
            out.append(sep)
    return {g: torch.tensor(v, dtype=torch.long) for g, v in groups.items()}


def tokenize_mix(sources: list[SourceDocs], tokenizer, every: int = HOLDOUT_EVERY):
    """(train stream, held-out stream, held-out stream per file, card info) of a checked mix."""
    train_parts: list[Part] = []
    held_parts: list[Part] = []
    held_by: dict[str, MixedStream] = {}
    entries = []
    tokenised = [(_streams(s.train, tokenizer), _streams(s.held, tokenizer)) for s in sources]
    totals = [sum(int(v.numel()) for v in tr.values()) for tr, _ in tokenised]
    if sources[0].spec.weight is None:
        file_w = [t / sum(totals) for t in totals]
    else:
        ws = [s.spec.weight for s in sources]
        file_w = [w / sum(ws) for w in ws]
    for src, (tr, ho), fw, total in zip(sources, tokenised, file_w, totals):
        e = src.spec.size_exponent
        mass = {g: float(v.numel()) ** e for g, v in tr.items()}
        norm = sum(mass.values())
        share = {g: fw * m / norm for g, m in mass.items()}
        prefix = src.label + (":" if src.spec.group_by else "")
        for g, v in sorted(tr.items()):
            train_parts.append(Part(prefix + g, TokenStream(v), share[g]))
        held_here = []
        for g, v in sorted(ho.items()):
            w = share.get(g, fw * float(v.numel()) ** e / norm)  # a group seen only in held-out documents
            held_parts.append(Part(prefix + g, TokenStream(v), w))
            held_here.append(Part(prefix + g, TokenStream(v), w))
        held_by[src.label] = MixedStream(held_here, label=f"held-out {src.label}")
        entry: dict[str, Any] = {
            "file": src.spec.file.name, "sha256": src.sha256, "weight": round(fw, 6),
            "documents": src.documents, "train_documents": len(src.train), "heldout_documents": len(src.held),
            "train_tokens": total, "heldout_tokens": sum(int(v.numel()) for v in ho.values()),
        }
        if src.spec.group_by:
            entry["group_by"] = src.spec.group_by
            entry["size_exponent"] = e
            entry["groups"] = {g: {"share": round(share[g], 6), "train_tokens": int(tr[g].numel())}
                               for g in sorted(tr, key=lambda g: -share[g])}
        entries.append(entry)
    rule = f"document index % {every} == {every - 1} of each file"
    info: dict[str, Any] = {
        "file": " + ".join(e["file"] for e in entries),
        "documents": sum(e["documents"] for e in entries),
        "train_documents": sum(e["train_documents"] for e in entries),
        "heldout_documents": sum(e["heldout_documents"] for e in entries),
        "heldout_rule": rule if any(s.documents > 1 for s in sources) else f"last 1/{every} of the text",
        "train_tokens": sum(totals),
        "heldout_tokens": sum(e["heldout_tokens"] for e in entries),
    }
    if len(entries) == 1 and not sources[0].spec.group_by:
        info["sha256"] = entries[0]["sha256"]
        info["heldout_rule"] = info["heldout_rule"].replace(" of each file", "")
    else:
        info["sources"] = entries
    return (MixedStream(train_parts, label="training"), MixedStream(held_parts, label="held-out"), held_by, info)
