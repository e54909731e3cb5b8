"""Measuring pipelines: what ``longctx eval`` runs, on your model and your text.

- :mod:`.evaluate`: the measurements (perplexity, streaming segments, the context gap, recall, fact recall in chats,
  passkey retrieval, speed and peak memory), each a function of an engine returning rows;
- :mod:`.compare`: several pipelines through the same suites, side by side (``longctx eval compare``);
- :mod:`.report`: rows as a table, CSV and PNG plots;
- :mod:`.textdata`: reading text (.txt, .jsonl[.gz]) and the held-out split adapter training leaves out;
- :mod:`.options`: the eval commands' comma-separated values.

May import: :mod:`longctx_llm.errors`, :mod:`longctx_llm.config` and :mod:`longctx_llm.runtime` (an engine, its
sessions, strategy states). The CLI and the trainers import this part; it imports neither.
"""

from . import compare, evaluate, options, report, textdata
from .evaluate import RECALL_INSTRUCTION, segment_perplexity
from .options import parse_ints, parse_lengths
from .report import format_table
from .textdata import HOLDOUT_EVERY, read_documents, read_text, split_documents, split_text

__all__ = [
    "HOLDOUT_EVERY",
    "RECALL_INSTRUCTION",
    "compare",
    "evaluate",
    "format_table",
    "options",
    "parse_ints",
    "parse_lengths",
    "read_documents",
    "read_text",
    "report",
    "segment_perplexity",
    "split_documents",
    "split_text",
    "textdata",
]
