"""benchmarks/card_figures.py: a new card gets its rounds and its CPU figures from files."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script():
    spec = importlib.util.spec_from_file_location("card_figures", ROOT / "benchmarks" / "card_figures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gap(ppl, k):
    return {"results": [{"samples": 32, "ppl_none": 24.0, "ppl_pipeline": ppl, "ppl_full": 10.0, "gap_closed": 0.9,
                         "gap_closed_nats": 0.8, "recent_tokens": float(k), "ppl_recent": 20.0, "ppl_recent_x4": 16.0}]}


def test_rounds_continue_the_previous_card_and_the_figures_come_from_the_eval_files(tmp_path):
    old, new, figs = tmp_path / "old", tmp_path / "new", tmp_path / "figs"
    for d in (old, new, figs):
        d.mkdir()
    (old / "adapter.json").write_text(json.dumps({"training": {"steps": 10, "rounds": [
        {"data": "a.jsonl", "device": "H200", "time_budget_s": None, "steps_at_end": 10}]}}))
    cmd = "longctx train ccm --data mix.yaml --time-budget 1150.0 --distill 0.5 --init /root/keep/init/ccm"
    (new / "adapter.json").write_text(json.dumps({"training": {"steps": 25, "device": "H100", "command": cmd,
                                                               "distill": 0.5}}))
    (figs / "1-pydocs-heldout.json").write_text(json.dumps(_gap(12.0, 8)))
    (figs / "2-general-en-heldout.json").write_text(json.dumps(_gap(17.0, 8)))
    assert _script().main([str(new), "--kind", "ccm", "--previous", str(old), "--figures", str(figs),
                           "--date", "2026-12-07"]) == 0
    card = json.loads((new / "adapter.json").read_text())
    assert card["training"]["rounds"][-1] == {"data": "mix.yaml", "device": "H100", "time_budget_s": 1150,
                                              "steps_at_end": 25, "distill": 0.5}
    assert len(card["training"]["rounds"]) == 2
    got = card["heldout_vs_recent"]
    assert got["by_source"]["general-en"]["ppl_ccm"] == 17.0
    assert got["by_source"]["pydocs-3.11"]["ppl_recent_32"] == 16.0
    assert "--turn-tokens 128" in got["command"] and got["samples"] == 32


def _setup(tmp_path, prev_steps, new_steps, cmd="longctx train rcc --data a.jsonl --data b.jsonl"):
    old, new, figs = tmp_path / "old", tmp_path / "new", tmp_path / "figs"
    for d in (old, new, figs):
        d.mkdir()
    (old / "adapter.json").write_text(json.dumps({"training": {"steps": prev_steps, "rounds": [
        {"data": "a.jsonl", "device": "H200", "time_budget_s": None, "steps_at_end": prev_steps}]}}))
    (new / "adapter.json").write_text(json.dumps({"training": {"steps": new_steps, "device": "H100", "command": cmd}}))
    (figs / "1-pydocs-heldout.json").write_text(json.dumps(_gap(10.0, 32)))
    (figs / "2-general-en-heldout.json").write_text(json.dumps(_gap(14.0, 32)))
    return [str(new), "--kind", "rcc", "--previous", str(old), "--figures", str(figs), "--date", "d"], new


def test_every_data_file_is_recorded_and_a_missing_budget_is_none(tmp_path):
    argv, new = _setup(tmp_path, 10, 20)
    assert _script().main(argv) == 0
    last = json.loads((new / "adapter.json").read_text())["training"]["rounds"][-1]
    assert last == {"data": "a.jsonl,b.jsonl", "device": "H100", "time_budget_s": None, "steps_at_end": 20}


def test_a_card_at_the_previous_steps_adds_no_round(tmp_path):
    argv, new = _setup(tmp_path, 20, 20)
    assert _script().main(argv) == 0
    assert len(json.loads((new / "adapter.json").read_text())["training"]["rounds"]) == 1


def test_a_run_that_does_not_continue_the_previous_adapter_is_refused(tmp_path):
    argv, new = _setup(tmp_path, 30, 20)
    with pytest.raises(SystemExit, match="not a continuation"):
        _script().main(argv)
    assert "rounds" not in json.loads((new / "adapter.json").read_text())["training"]


def test_rows_of_different_sample_counts_are_refused(tmp_path):
    argv, _ = _setup(tmp_path, 10, 20)
    figs = tmp_path / "figs" / "1-pydocs-heldout.json"
    row = _gap(10.0, 32)
    row["results"][0]["samples"] = 16
    figs.write_text(json.dumps(row))
    with pytest.raises(SystemExit, match="differ in samples"):
        _script().main(argv)


def test_a_missing_figures_file_fails_loudly(tmp_path):
    (tmp_path / "adapter.json").write_text(json.dumps({"training": {"steps": 1, "device": "x", "command": "c",
                                                                    "rounds": [{"steps_at_end": 1}]}}))
    with pytest.raises(FileNotFoundError):
        _script().main([str(tmp_path), "--kind", "rcc", "--previous", str(tmp_path), "--figures", str(tmp_path),
                        "--date", "d"])


def test_the_shipped_defaults_figures_go_beside_the_slots_alone_ones(tmp_path):
    argv, new = _setup(tmp_path, 10, 20)
    card = json.loads((new / "adapter.json").read_text())
    card["heldout_vs_recent"] = {"note": "slots alone"}
    (new / "adapter.json").write_text(json.dumps(card))
    assert _script().main(argv + ["--default"]) == 0
    card = json.loads((new / "adapter.json").read_text())
    assert card["heldout_vs_recent"] == {"note": "slots alone"}  # kept as it was
    got = card["heldout_vs_recent_default"]
    assert "--context 1056" in got["command"] and "raw_tail 32" in got["pipeline"]
    assert got["by_source"]["general-en"]["ppl_rcc"] == 14.0
