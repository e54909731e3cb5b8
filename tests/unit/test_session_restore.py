"""Restoring a forged or damaged saved session: counters out of range and NaN state are SessionErrors; what a killed
save left inside the folder is removed by the next load."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch

from longctx_llm import Engine
from longctx_llm.errors import SessionError

USER = [{"role": "user", "content": "My name is Ada and I live in Paris, a city on the Seine."}]
STRATEGIES = {"full": "full", "streaming": {"name": "streaming", "sink_tokens": 4, "window": 16}}


def saved(tiny_model, tmp_path, strategy="full"):
    lm = tiny_model("llama", max_positions=512)
    engine = Engine(lm, strategy=STRATEGIES[strategy], generation={"max_new_tokens": 4, "temperature": 0.0})
    engine.chat(USER, session_id="s")
    return lm, Path(engine.save_session("s", tmp_path / "saved"))


def edit_doc(path, fn):
    doc_path = os.path.join(path, "session.json")
    with open(doc_path) as f:
        doc = json.load(f)
    fn(doc)
    with open(doc_path, "w") as f:
        json.dump(doc, f)
    return doc


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_seen_counter_beyond_the_cache_is_refused(tiny_model, tmp_path, strategy):
    lm, path = saved(tiny_model, tmp_path, strategy)
    doc = edit_doc(path, lambda d: d["strategy_meta"].update(seen=10**9))
    fresh = Engine(lm, strategy=STRATEGIES[strategy])
    with pytest.raises(SessionError) as e:
        fresh.load_session(path)
    what = {"full": "strategy", "streaming": "streaming"}[strategy]
    assert f"saved session {str(path)!r}: saved {what} state: seen is 1000000000, but its cache holds" in str(e.value)
    assert fresh.sessions() == []
    held = len(doc["cached_ids"])
    if strategy == "streaming":  # evicted forged to agree: the token record still disagrees
        edit_doc(path, lambda d: d["strategy_meta"].update(seen=10**9, evicted=10**9 - d["strategy_meta"]["filled"]))
        message = f"strategy state has seen 1000000000 tokens, but its cached_ids hold {held}"
        with pytest.raises(SessionError, match=message):
            fresh.load_session(path)


def test_a_token_record_that_disagrees_with_the_cache_is_refused(tiny_model, tmp_path):
    lm, path = saved(tiny_model, tmp_path)
    edit_doc(path, lambda d: d.update(cached_ids=d["cached_ids"][:-3], token_ids=d["token_ids"][:-3]))
    with pytest.raises(SessionError, match=r"has seen (\d+) tokens, but its cached_ids hold \d+ \(valid"):
        Engine(lm).load_session(path)


def test_nan_state_with_a_forged_checksum_is_refused(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    lm, path = saved(tiny_model, tmp_path)
    doc = json.loads((path / "session.json").read_text())
    entry = doc["files"]["strategy"]
    tensors = load_file(str(path / entry["name"]))
    tensors["layer1.values"] = torch.full_like(tensors["layer1.values"], float("nan"))
    save_file(tensors, str(path / entry["name"]))
    data = (path / entry["name"]).read_bytes()
    edit_doc(path, lambda d: d["files"]["strategy"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(SessionError, match="'layer1.values' holds NaN or infinite values") as e:
        Engine(lm).load_session(path)


def test_a_killed_saves_staging_folder_is_removed_on_load(tiny_model, tmp_path):
    lm, path = saved(tiny_model, tmp_path)
    staging = path / ".staging-18c0ffee00000000deadbeef"
    staging.mkdir()
    (staging / "strategy-18c0ffee00000000deadbeef.safetensors").write_bytes(b"\0" * 1_000_000)
    (path / "memory-18c0ffee00000000deadbeef.safetensors").write_bytes(b"half written")
    (path / ".session.json.tmp-18c0ffee00000000deadbeef").write_text("{")
    (path / "notes.txt").write_text("a user's file stays")
    kept = sorted(["session.json", "notes.txt", *(e["name"] for e in json.loads(
        (path / "session.json").read_text())["files"].values())])
    restored = Engine(lm).load_session(path)
    assert restored.turns == 1 and sorted(os.listdir(path)) == kept


def test_leftovers_stay_while_another_process_saves_there(tiny_model, tmp_path):
    import fcntl

    lm, path = saved(tiny_model, tmp_path)
    staging = path / ".staging-18c0ffee00000000deadbeef"
    staging.mkdir()
    fd = os.open(str(tmp_path), os.O_RDONLY)  # what a running save holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        Engine(lm).load_session(path)
        assert staging.is_dir()
    finally:
        os.close(fd)
    Engine(lm).load_session(path)
    assert not staging.exists()
