"""Entry-point discovery, registration, and two distributions claiming one name."""

import sys
import textwrap

import pytest

from longctx_llm import ConfigError, Engine, PluginError, Strategy, registry
from longctx_llm.builtins.full import FullStrategy


def test_builtins_come_from_entry_points():
    kinds = {(p.kind, p.name): p for p in registry.all_plugins()}
    assert kinds[("strategy", "full")].distribution == "longctx-llm"
    assert kinds[("memory", "buffer")].distribution == "longctx-llm"
    assert kinds[("component", "chat")].distribution == "longctx-llm"
    assert registry.get("strategy", "full") is FullStrategy


def test_register_and_unregister_a_fake(tiny_model):
    class Fake(FullStrategy):
        name = "fake-wide"

        def context_window(self, info):
            return 10 * info.pretraining_length

    registry.register("strategy", "fake-wide", Fake)
    try:
        assert "fake-wide" in registry.names("strategy")
        engine = Engine(tiny_model("llama", max_positions=64), strategy="fake-wide")
        assert engine.context_window == 640
    finally:
        registry.unregister("strategy", "fake-wide")
    with pytest.raises(ConfigError, match="fake-wide"):
        Engine(tiny_model("llama"), strategy="fake-wide")


def _dist(root, name, entry):
    d = root / f"{name.replace('-', '_')}-1.0.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (d / "entry_points.txt").write_text(textwrap.dedent(entry))


def test_two_distributions_claiming_one_name_is_an_error(tmp_path, monkeypatch):
    _dist(tmp_path, "dist-one", "[longctx_llm.strategies]\nclash = os:getcwd\n")
    _dist(tmp_path, "dist-two", "[longctx_llm.strategies]\nclash = os:getpid\n")
    _dist(tmp_path, "dist-broken", "[longctx_llm.strategies]\nbroken = no_such_module_xyz:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.refresh()
    try:
        with pytest.raises(PluginError) as e:
            registry.get("strategy", "clash")
        assert "dist-one" in str(e.value) and "dist-two" in str(e.value)
        with pytest.raises(PluginError, match="dist-broken.*failed to load"):
            registry.get("strategy", "broken")
        assert registry.get("strategy", "full") is FullStrategy  # the rest still works
    finally:
        monkeypatch.undo()
        registry.refresh()


def test_unknown_kind_and_name():
    with pytest.raises(PluginError, match="valid: strategy, memory, component"):
        registry.available("widget")
    with pytest.raises(PluginError, match="installed: .*full"):
        registry.get("strategy", "nope")
