"""YAML pipelines: safe loading, strict schemas, error messages that name the field and the bad value."""

import json

import pytest

from longctx_llm import ConfigError, load_config
from longctx_llm.config import json_schema, parse_config


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_minimal_and_shorthand(tmp_path):
    cfg = load_config(write(tmp_path, "strategy: full\nmemory: buffer\ncomponent: chat\n"))
    assert cfg.strategy.name == "full" and cfg.model.source == "smollm2-135m-instruct"
    assert cfg.generation.max_new_tokens == 256
    assert load_config(write(tmp_path, "", "empty.yaml")).strategy.name == "full"


def test_plugin_option_errors_name_path_and_value(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "strategy: {name: full, prefill_chunk_size: -3}\n"))
    assert "strategy.prefill_chunk_size" in str(e.value) and "-3" in str(e.value)
    with pytest.raises(ConfigError, match=r"strategy\.bogus: unknown field"):
        load_config(write(tmp_path, "strategy: {name: full, bogus: 1}\n"))


def test_unknown_plugin_lists_installed(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "strategy: {name: warp-drive}\n"))
    assert "warp-drive" in str(e.value) and "full" in str(e.value)
    with pytest.raises(ConfigError, match="buffer"):
        load_config(write(tmp_path, "memory: nope\n"))


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: {source: x, colour: red}\n", "model.colour: unknown field"),
        ("generation: {max_new_tokens: 0}\n", "generation.max_new_tokens"),
        ("generation: {stop: ['']}\n", "generation.stop"),
        ("model: {device: tpu}\n", "model.device"),
        ("model: {dtype: int3}\n", "model.dtype"),
        ("[1, 2]\n", "must be a mapping"),
        ("strategy: {name: full\n", "YAML syntax error"),
        ("strategy: !!python/object/apply:os.system ['echo pwned']\n", "tag not allowed"),
        ("model: !!python/name:os.system\n", "tag not allowed"),
    ],
)
def test_bad_files(tmp_path, text, fragment):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert fragment in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/pipeline.yaml")


def test_schema_lists_installed_plugins_and_is_json():
    schema = json_schema()
    json.dumps(schema)
    names = json.dumps(schema["properties"]["strategy"])
    assert '"const": "full"' in names
    assert "prefill_chunk_size" in names


def test_parse_dict():
    cfg = parse_config({"strategy": {"name": "full", "max_length": 512}, "generation": {"temperature": 0.5}})
    assert cfg.strategy.options() == {"max_length": 512} and cfg.generation.temperature == 0.5
