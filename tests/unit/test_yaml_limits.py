"""Pipeline files are untrusted: size, alias expansion, nesting and duplicate keys are refused fast and clearly."""

from __future__ import annotations

import time

import pytest

from longctx_llm.config import MAX_YAML_BYTES, MAX_YAML_DEPTH, MAX_YAML_NODES, _load_yaml, load_config
from longctx_llm.errors import ConfigError


def write(tmp_path, text, name="p.yaml"):
    p = tmp_path / name
    p.write_text(text) if isinstance(text, str) else p.write_bytes(text)
    return p


def refused(tmp_path, text, fragment, limit_s=1.0):
    """load_config must raise ConfigError containing ``fragment`` quickly, with a bounded message."""
    p = write(tmp_path, text)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as e:
        load_config(p)
    took = time.perf_counter() - t0
    msg = str(e.value)
    assert fragment in msg, msg
    assert str(p) in msg
    assert took < limit_s, f"took {took:.2f} s"
    assert len(msg) < 1000, msg[:300]
    return msg


def billion_laughs(levels=9, fan=9):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * fan) + "]")
    lines.append(f"strategy: {{name: full, boom: *a{levels - 1}}}")
    return "\n".join(lines) + "\n"


# ---- (a) size -------------------------------------------------------------------------------------------------
def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    text = "# " + "x" * MAX_YAML_BYTES + "\nstrategy: full\n"
    msg = refused(tmp_path, text, f"at most {MAX_YAML_BYTES} bytes")
    assert "xxxxxxxxxx" not in msg

    def no_read(*a, **k):
        raise AssertionError("a file over the limit was opened")

    monkeypatch.setattr("builtins.open", no_read)
    with pytest.raises(ConfigError, match="at most"):
        load_config(tmp_path / "p.yaml")


def test_a_file_just_under_the_limit_is_read(tmp_path):
    text = "strategy: full\n# " + "x" * (MAX_YAML_BYTES - 100) + "\n"
    assert len(text.encode()) <= MAX_YAML_BYTES
    assert load_config(write(tmp_path, text)).strategy.name == "full"


def test_text_over_the_limit_is_refused_by_the_parser(tmp_path):
    with pytest.raises(ConfigError, match="characters long") as e:
        _load_yaml("a: " + "b" * (MAX_YAML_BYTES + 1), "inline")
    assert "bbbbbbbbbb" not in str(e.value)


def test_a_device_file_is_read_bounded(tmp_path):
    # /dev/zero reports size 0 and never ends: the bounded read stops it
    with pytest.raises(ConfigError, match="over"):
        load_config("/dev/zero")


def test_a_folder_and_bad_utf8(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    refused(tmp_path, b"strategy: \xff\xfe full\n", "not UTF-8 text")


# ---- (b) alias expansion --------------------------------------------------------------------------------------
def test_billion_laughs_fails_fast(tmp_path):
    msg = refused(tmp_path, billion_laughs(), f"more than {MAX_YAML_NODES} nodes", limit_s=0.5)
    assert "lol" not in msg


def test_quadratic_alias_fan_out_fails_fast(tmp_path):
    # one big anchored list repeated many times: small text, large expansion
    text = "big: &big [" + ", ".join(["1"] * 2000) + "]\nrefs: [" + ", ".join(["*big"] * 2000) + "]\n"
    refused(tmp_path, text, "nodes", limit_s=0.5)


def test_a_recursive_alias_is_refused(tmp_path):
    refused(tmp_path, "strategy: &x {name: full, again: *x}\n", "recursive")


def test_small_aliases_and_merge_keys_still_work(tmp_path):
    text = (
        "defaults: &d {name: full}\n"
        "strategy: *d\n"
        "memory: {<<: {name: buffer, max_turns: 2}, max_turns: 3}\n"
    )
    with pytest.raises(ConfigError, match="defaults: unknown field"):  # the schema, not the loader, objects
        load_config(write(tmp_path, text))
    cfg = load_config(write(tmp_path, "strategy: &d {name: full}\nmemory: {<<: {name: buffer, max_turns: 2}}\n"))
    assert cfg.strategy.name == "full" and cfg.memory.options() == {"max_turns": 2}


def test_a_flat_list_over_the_node_budget_is_refused(tmp_path):
    text = "generation: {stop: [" + ", ".join(["a"] * (MAX_YAML_NODES + 10)) + "]}\n"
    refused(tmp_path, text, "nodes")


# ---- (c) nesting ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "[" * 100_000 + "]" * 100_000,
        "{a: " * 100_000,
        "strategy: " + "[" * 5000 + "]" * 5000 + "\n",
        "".join(" " * i + f"k{i}:\n" for i in range(2 * MAX_YAML_DEPTH)) + " " * 2 * MAX_YAML_DEPTH + "v\n",
        "".join(" " * i + "- \n" for i in range(2 * MAX_YAML_DEPTH)),
    ],
    ids=["open-brackets", "balanced-brackets", "flow-mappings", "nested-value", "block-mappings", "block-sequences"],
)
def test_deep_nesting_is_a_config_error_not_a_recursion_error(tmp_path, text):
    refused(tmp_path, text, f"nesting deeper than {MAX_YAML_DEPTH} levels")


def test_nesting_within_the_limit_is_fine():
    depth = MAX_YAML_DEPTH - 2
    data = _load_yaml("a: " + "[" * depth + "]" * depth, "inline")
    for _ in range(depth):
        data = data["a"] if isinstance(data, dict) else data[0] if data else data
    assert data == []


# ---- (d) duplicate keys ---------------------------------------------------------------------------------------
def test_a_duplicate_key_names_the_key_and_lines(tmp_path):
    text = "strategy: full\nmemory: buffer\nstrategy: {name: streaming}\n"
    msg = refused(tmp_path, text, "duplicate key 'strategy'")
    assert "line 3" in msg and "first given at line 1" in msg


def test_a_nested_duplicate_key(tmp_path):
    msg = refused(tmp_path, "generation:\n  max_new_tokens: 4\n  max_new_tokens: 8\n", "duplicate key 'max_new_tokens'")
    assert "line 3" in msg


def test_a_long_duplicate_key_is_quoted_short(tmp_path):
    key = "k" * 50_000
    msg = refused(tmp_path, f"? {key}\n: 1\n? {key}\n: 2\n", "duplicate key")  # explicit keys: no length limit
    assert key not in msg and "..." in msg


def test_merge_keys_may_be_overridden():
    assert _load_yaml("a: {<<: {x: 1}, x: 2}\n", "inline") == {"a": {"x": 2}}


# ---- still a safe loader, and messages stay short -------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "strategy: !!python/object/apply:os.system ['echo pwned']\n",
        "model: !!python/name:os.system\n",
        "model: !!python/object/new:builtins.dict {}\n",
        "strategy: !custom " + "x" * 5000 + "\n",
    ],
)
def test_python_tags_are_refused(tmp_path, text):
    refused(tmp_path, text, "tag not allowed")


def test_syntax_errors_do_not_echo_the_whole_input(tmp_path):
    msg = refused(tmp_path, "strategy: {name: " + "z" * 100_000 + "\n", "YAML syntax error")
    assert "z" * 300 not in msg


def test_long_bad_values_are_quoted_short(tmp_path):
    msg = refused(tmp_path, "model: {device: " + "q" * 100_000 + "}\n", "model.device")
    assert "q" * 300 not in msg
    msg = refused(tmp_path, "model: {" + ", ".join(f"x{i}: 1" for i in range(500)) + "}\n", "unknown field")
    assert "more" in msg


def test_an_unhashable_key_is_not_called_a_tag(tmp_path):
    msg = refused(tmp_path, "{[1]: 2}\n", "invalid YAML value")
    assert "tag" not in msg


def test_a_normal_pipeline_still_loads(tmp_path):
    text = (
        "model: {source: smollm2-135m-instruct, device: cpu, dtype: float32}\n"
        "strategy: {name: full}\n"
        "memory: {name: buffer, max_turns: 4}\n"
        "generation: {max_new_tokens: 16, temperature: 0.0, stop: ['###']}\n"
        "component: chat\n"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.memory.options() == {"max_turns": 4} and cfg.generation.stop == ["###"]
