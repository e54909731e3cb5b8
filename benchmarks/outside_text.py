"""Held-out text from outside the shared corpus, built from what this machine has: the long descriptions of the
installed Python distributions (their README files, from ``*.dist-info/METADATA``) and the licence texts under
``/usr/share/common-licenses``. The adapters were trained on the shared corpora (the Python docs, general-en); this
checks that their figures are not an adaptation to those corpora. Writes a ``.jsonl.gz`` that every ``longctx eval`` command reads.

    python benchmarks/outside_text.py --out /tmp/outside.jsonl.gz
    longctx eval compare --pipelines a.yaml,b.yaml --suite gap,recall --text /tmp/outside.jsonl.gz --context 1024
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from email.parser import Parser
from importlib import metadata
from pathlib import Path


def descriptions(min_chars: int) -> list[dict]:
    seen, docs = set(), []
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        if not name or name in seen or name.startswith("longctx"):  # not our own README
            continue
        seen.add(name)
        text = dist.read_text("METADATA") or ""
        body = Parser().parsestr(text).get_payload() or ""
        if len(body) >= min_chars:
            docs.append({"source": f"pypi/{name}", "text": body.strip()})
    return docs


def licences(min_chars: int) -> list[dict]:
    root = Path("/usr/share/common-licenses")
    docs = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if p.is_file() and not p.is_symlink():
            text = p.read_text(errors="replace")
            if len(text) >= min_chars:
                docs.append({"source": f"licence/{p.name}", "text": text})
    return docs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--min-chars", type=int, default=8000, help="shortest document kept (default: %(default)s)")
    p.add_argument("--kind", choices=("all", "readmes", "licences"), default="all",
                   help="readmes: the Python distributions' long descriptions (software documentation in Markdown or "
                        "reStructuredText); licences: the licence texts (legal English); all: both (default)")
    args = p.parse_args(argv)
    docs = (descriptions(args.min_chars) if args.kind in ("all", "readmes") else []) + \
        (licences(args.min_chars) if args.kind in ("all", "licences") else [])
    docs = sorted(docs, key=lambda d: d["source"])
    if not docs:
        print("outside_text: found no document", file=sys.stderr)
        return 1
    with gzip.open(args.out, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    print(f"{len(docs)} documents, {sum(len(d['text']) for d in docs):,} characters -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
