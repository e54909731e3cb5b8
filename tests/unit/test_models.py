"""Model sources: aliases, directories, GGUF files, and the errors for bad ones. Loading is lazy and shared."""

import pytest

from longctx_llm import Engine, ModelHandle, ModelLoadError
from longctx_llm.models import resolve_source


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
