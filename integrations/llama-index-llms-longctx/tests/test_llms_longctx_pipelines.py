"""The llama_index.llm and llama_index.query_engine pipeline components, offline, end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from longctx_llm import cli, load_pipeline, registry
from longctx_llm.builtins.full import FullStrategy
from longctx_llm.config import load_config
from longctx_llm.errors import ConfigError
from llama_index.llms.longctx import LongctxLLM
from llama_index.llms.longctx.query_engine import QueryEngineOptions, build_query_engine, resolve_folder

ROOT = Path(__file__).resolve().parents[3]
PIPELINES = ROOT / "examples" / "pipelines"
DOCS = ROOT / "examples" / "docs"


class WideStrategy(FullStrategy):
    name = "test-wide"

    def context_window(self, info):
        return 8 * info.pretraining_length


def test_llm_pipeline_builds_a_lazy_llm():
    llm = load_pipeline(PIPELINES / "llama_index_llm.yaml")
    assert isinstance(llm, LongctxLLM)
    assert llm.system_prompt == "You are a concise assistant."
    assert not llm.engine.model_handle.is_loaded


@pytest.mark.integration
def test_changing_the_strategy_line_changes_the_window(smollm):
    registry.register("strategy", "test-wide", WideStrategy)
    try:
        base = {"model": {"source": "smollm2-135m-instruct", "device": "cpu", "dtype": "float32"},
                "component": "llama_index.llm"}
        assert load_pipeline({**base, "strategy": "full"}).metadata.context_window == 8192
        assert load_pipeline({**base, "strategy": "test-wide"}).metadata.context_window == 8 * 8192
    finally:
        registry.unregister("strategy", "test-wide")


@pytest.mark.integration
def test_longctx_run_with_the_llm_pipeline(smollm, capsys):
    assert cli.main(["run", str(PIPELINES / "llama_index_llm.yaml"), "--prompt", "What is the capital of France?"]) == 0
    assert "Paris" in capsys.readouterr().out


@pytest.mark.integration
def test_query_engine_answers_from_the_documents_offline(smollm, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # ../docs must resolve next to the YAML file, not from the cwd
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(PIPELINES / "llama_index_query_engine.yaml")
    assert resolve_folder(config.component.options()["documents"], config.source_path) == DOCS.resolve()
    qe = load_pipeline(PIPELINES / "llama_index_query_engine.yaml")
    response = qe.query("What is the name of the project's mascot?")
    answer = "".join(response.response_gen)
    assert "Quill" in answer  # a made-up fact: only the documents know it
    assert Path(response.source_nodes[0].metadata["file_path"]).name == "project.md"
    streamed = "".join(cli_respond(qe, "What animal is the project's mascot?"))
    assert "heron" in streamed.lower()


def cli_respond(qe, prompt):
    from llama_index.llms.longctx.query_engine import QueryEngineComponent

    return QueryEngineComponent.respond(qe, prompt, session_id="run")


def test_relative_folders_resolve_next_to_the_yaml_first(tmp_path, monkeypatch):
    (tmp_path / "cfg" / "docs").mkdir(parents=True)
    (tmp_path / "cwd" / "other").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "cwd")
    yaml_path = tmp_path / "cfg" / "p.yaml"
    assert resolve_folder("docs", yaml_path) == (tmp_path / "cfg" / "docs").resolve()
    assert resolve_folder("other", yaml_path) == (tmp_path / "cwd" / "other").resolve()  # falls back to the cwd
    with pytest.raises(ConfigError, match="'missing' not found.*cfg.*cwd"):
        resolve_folder("missing", yaml_path)


@pytest.mark.parametrize(
    ("component", "fragment"),
    [
        ({"top_k": 3}, "documents"),
        ({"documents": "d", "top_k": 0}, "top_k"),
        ({"documents": "d", "chunk_size": 64, "chunk_overlap": 64}, "chunk_overlap"),
        ({"documents": "d", "extensions": ["md"]}, "extensions"),
        ({"documents": "d", "similarity": 0.5}, "similarity"),
    ],
)
def test_bad_query_engine_options(component, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_pipeline({"component": {"name": "llama_index.query_engine", **component}})


def test_bad_document_folders(tmp_path, tiny_model):
    from longctx_llm import Engine

    llm = LongctxLLM(engine=Engine(tiny_model("llama")))
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("Some notes.")
    with pytest.raises(ConfigError, match="no files with extensions"):
        build_query_engine(llm, QueryEngineOptions(documents=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="not a local sentence-transformers model folder"):
        build_query_engine(llm, QueryEngineOptions(documents=str(tmp_path / "notes"), embed_model=str(tmp_path)))
    with pytest.raises(ConfigError, match="not found"):
        build_query_engine(llm, QueryEngineOptions(documents=str(tmp_path / "nowhere")))
