"""Model sources: aliases, directories, GGUF files, and the errors for bad ones. Loading is lazy and shared."""

import pytest

from longctx_llm import Engine, ModelHandle, ModelLoadError
from longctx_llm.model import resolve_source


def test_alias_resolves_to_packaged_gguf():
    r = resolve_source("smollm2-135m-instruct")
    assert r.gguf_file.endswith(".gguf") and (r.directory / r.gguf_file).is_file()


@pytest.mark.parametrize("source", ["no-such-alias", "/nonexistent/model.gguf", "/nonexistent/dir"])
def test_unknown_sources(source):
    with pytest.raises(ModelLoadError) as e:
        resolve_source(source)
    assert source.split("/")[-1] in str(e.value) or source in str(e.value)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        resolve_source(str(tmp_path))


def test_corrupted_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"NOTAGGUF" + b"\0" * 100)
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        ModelHandle(str(bad), device="cpu").get()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x01" * 20)
    with pytest.raises(ModelLoadError, match="could not load"):
        ModelHandle(str(truncated), device="cpu").get()


def test_construction_is_lazy_and_copies_are_shared():
    h1 = ModelHandle("smollm2-135m-instruct", device="cpu")
    engine = Engine(h1)
    assert not h1.is_loaded and engine.model_handle is h1
    h2 = ModelHandle("smollm2-135m-instruct", device="cpu", dtype="float32")
    assert h1.get() is h2.get()


def test_bad_device_and_dtype():
    from longctx_llm import ConfigError

    with pytest.raises(ConfigError, match="dtype"):
        ModelHandle("smollm2-135m-instruct", device="cpu", dtype="int3").get()


def test_converted_gguf_cache_is_keyed_by_content(tmp_path, monkeypatch):
    """Two clones (two paths) of the same GGUF share one converted copy; another file gets its own."""
    from longctx_llm.model.loading import _gguf_cache_dir

    monkeypatch.setenv("LONGCTX_CACHE_DIR", str(tmp_path / "cache"))
    a, b, c = tmp_path / "a.gguf", tmp_path / "b" / "a.gguf", tmp_path / "c.gguf"
    b.parent.mkdir()
    a.write_bytes(b"GGUF" + b"x" * 100)
    b.write_bytes(b"GGUF" + b"x" * 100)
    c.write_bytes(b"GGUF" + b"y" * 100)
    assert _gguf_cache_dir(a) == _gguf_cache_dir(b) != _gguf_cache_dir(c)


def test_cache_list_and_clear(tmp_path, monkeypatch, capsys):
    from longctx_llm import cli

    monkeypatch.setenv("LONGCTX_CACHE_DIR", str(tmp_path))
    (tmp_path / "gguf" / "abc").mkdir(parents=True)
    (tmp_path / "gguf" / "abc" / "model.safetensors").write_bytes(b"0" * 2048)
    assert cli.main(["cache", "list", "--json"]) == 0
    import json

    entries = json.loads(capsys.readouterr().out)["entries"]
    assert entries[0]["bytes"] == 2048
    assert cli.main(["cache", "clear"]) == 0
    assert not (tmp_path / "gguf").exists()
