"""Saved sessions: never destroying what is at the path, crash-atomic saving, untrusted files on reading."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from longctx_llm import Engine
from longctx_llm.errors import SessionError
from longctx_llm.runtime import session as session_mod
from longctx_llm.runtime.session import (
    FORMAT_MARKER,
    Session,
    check_compatible,
    check_dtype,
    read_session,
    save_session,
)

HEADER = {"model": "fake", "strategy": {"name": "fake"}, "memory": {"name": "fake"}}


class _State:
    """A stand-in strategy/memory state: saving needs only state_dict()."""

    def __init__(self, n: int = 16, dtype=torch.float32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.tensors = {"kv": torch.randn(n, generator=g).to(dtype), "real_tokens": torch.arange(4)}

    def state_dict(self):
        return dict(self.tensors), {"seen": 4}


def fake_session(turns: int = 1, n: int = 16, seed: int = 0, sid: str = "s") -> Session:
    s = Session(sid, _State(n, seed=seed), _State(2, seed=seed + 1))
    s.history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    s.cached_ids = [1, 2, 3, 4]
    s.token_ids = [1, 2, 3, 4]
    s.turns = turns
    return s


def doc_of(path: Path) -> dict:
    return json.loads((path / "session.json").read_text())


def write_doc(path: Path, doc: dict) -> None:
    (path / "session.json").write_text(json.dumps(doc))


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


# ---- 1. saving never destroys what it did not write -----------------------------------------------------------
def test_save_refuses_a_file_at_the_path(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    with pytest.raises(SessionError, match="not a session saved by longctx-llm") as e:
        save_session(fake_session(), target, HEADER)
    assert "notes.txt" in str(e.value) and "does not exist yet" in str(e.value)
    assert target.read_text() == "precious"
    assert listing(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize(
    "contents",
    [
        {},  # an empty folder
        {"thesis.tex": "precious"},
        {"session.json": '{"format_version": 99}'},  # a session.json that is not ours
        {"session.json": "not json", "data.bin": "x"},
        {"session.json": json.dumps({"format": "someone-else", "format_version": 2})},
    ],
)
def test_save_refuses_a_folder_that_is_not_a_saved_session(tmp_path, contents):
    target = tmp_path / "work"
    target.mkdir()
    for name, text in contents.items():
        (target / name).write_text(text)
    with pytest.raises(SessionError, match="not a session saved by longctx-llm"):
        save_session(fake_session(), target, HEADER, overwrite=True)
    assert {n: (target / n).read_text() for n in listing(target)} == contents
    assert listing(tmp_path) == ["work"]


def test_save_refuses_a_dangling_symlink(tmp_path):
    target = tmp_path / "link"
    target.symlink_to(tmp_path / "nowhere")
    with pytest.raises(SessionError, match="not a session saved"):
        save_session(fake_session(), target, HEADER)
    assert target.is_symlink() and not (tmp_path / "nowhere").exists()


def test_replacing_a_saved_session_needs_overwrite(tmp_path):
    target = tmp_path / "saved"
    save_session(fake_session(turns=1), target, HEADER)
    with pytest.raises(SessionError, match="overwrite=True") as e:
        save_session(fake_session(turns=2), target, HEADER)
    assert "already holds a saved session" in str(e.value)
    assert read_session(target)[0]["turns"] == 1
    save_session(fake_session(turns=2, seed=5), target, HEADER, overwrite=True)
    doc, s_tensors, _ = read_session(target)
    assert doc["turns"] == 2 and doc["format"] == FORMAT_MARKER
    assert torch.equal(s_tensors["kv"], _State(seed=5).tensors["kv"])
    # the old version's tensor files are gone: the folder holds exactly one version
    names = listing(target)
    assert names == sorted(["session.json", doc["files"]["strategy"]["name"], doc["files"]["memory"]["name"]])
    assert not [n for n in listing(tmp_path) if n != "saved"]


def test_user_files_inside_a_saved_session_survive_an_overwrite(tmp_path):
    target = tmp_path / "saved"
    save_session(fake_session(), target, HEADER)
    (target / "notes.txt").write_text("mine")
    save_session(fake_session(turns=3), target, HEADER, overwrite=True)
    assert (target / "notes.txt").read_text() == "mine"
    assert read_session(target)[0]["turns"] == 3


def test_tilde_is_expanded_and_never_a_literal_folder(tmp_path, monkeypatch):
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    path = save_session(fake_session(), "~/sessions/a", HEADER)
    assert path == home / "sessions" / "a" and (path / "session.json").is_file()
    assert read_session("~/sessions/a")[0]["id"] == "s"
    with pytest.raises(SessionError, match="~"):
        save_session(fake_session(), "~no_such_user_longctx/x", HEADER)
    assert listing(cwd) == []


# ---- 2. crash-atomic saving ----------------------------------------------------------------------------------
def test_leftovers_of_interrupted_saves_are_cleaned(tmp_path):
    target = tmp_path / "saved"
    save_session(fake_session(), target, HEADER)
    current = listing(target)
    # what saves killed at various moments leave behind
    (tmp_path / ".saved.tmp-abc123").mkdir()
    (tmp_path / ".saved.tmp-abc123" / "strategy.safetensors").write_bytes(b"partial")
    (tmp_path / ".saved.old-4242").mkdir()
    (tmp_path / ".saved.old-4242" / "session.json").write_text("{}")
    (target / "strategy-0123456789abcdef.safetensors").write_bytes(b"half written")
    (target / ".session.json.tmp-0123456789abcdef").write_text("{")
    (tmp_path / ".other.tmp-1").mkdir()  # another path's leftovers are not this save's business
    assert read_session(target)[0]["turns"] == 1  # leftovers do not disturb reading
    save_session(fake_session(turns=2), target, HEADER, overwrite=True)
    assert sorted(listing(tmp_path)) == [".other.tmp-1", "saved"]
    assert len(listing(target)) == len(current) == 3
    assert read_session(target)[0]["turns"] == 2


def test_an_old_save_moved_aside_by_an_interrupted_save_is_recovered(tmp_path):
    # an earlier version moved the old save to .NAME.old-PID before renaming the new one in; a kill between the two
    # renames left the path empty. The next save puts the old one back rather than deleting it.
    target = tmp_path / "saved"
    save_session(fake_session(turns=7), target, HEADER)
    os.rename(target, tmp_path / ".saved.old-999")
    with pytest.raises(SessionError, match="overwrite=True"):
        save_session(fake_session(turns=8), target, HEADER)
    assert read_session(target)[0]["turns"] == 7
    save_session(fake_session(turns=8), target, HEADER, overwrite=True)
    assert read_session(target)[0]["turns"] == 8 and listing(tmp_path) == ["saved"]


@pytest.mark.parametrize("fail_on", [1, 2])
def test_an_interrupted_overwrite_leaves_the_old_session(tmp_path, monkeypatch, fail_on):
    target = tmp_path / "saved"
    save_session(fake_session(turns=1), target, HEADER)
    before = {n: (target / n).read_bytes() for n in listing(target)}
    real, calls = session_mod._write_tensors, []

    def failing(path, tensors):
        calls.append(path)
        if len(calls) == fail_on:
            path.write_bytes(b"partial")  # the tmp file exists when the failure strikes
            raise OSError(28, "No space left on device")
        real(path, tensors)

    monkeypatch.setattr(session_mod, "_write_tensors", failing)
    with pytest.raises(SessionError, match="No space left on device") as e:
        save_session(fake_session(turns=2), target, HEADER, overwrite=True)
    assert "saved" in str(e.value)
    assert {n: (target / n).read_bytes() for n in listing(target)} == before
    assert read_session(target)[0]["turns"] == 1
    assert listing(tmp_path) == ["saved"]


def test_an_interrupted_first_save_leaves_nothing(tmp_path, monkeypatch):
    def failing(path, tensors):
        path.write_bytes(b"partial")
        raise RuntimeError("killed")

    monkeypatch.setattr(session_mod, "_write_tensors", failing)
    with pytest.raises(SessionError, match="killed"):
        save_session(fake_session(), tmp_path / "new", HEADER)
    assert listing(tmp_path) == []


def _save_forever(target: str) -> None:  # runs in a forked child, killed with SIGKILL
    turns = 1
    while True:
        turns += 1
        save_session(fake_session(turns=turns, n=200_000, seed=turns), target, HEADER, overwrite=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_kill_9_at_any_moment_leaves_the_old_or_the_new_session(tmp_path):
    target = tmp_path / "saved"
    save_session(fake_session(turns=1, n=200_000, seed=1), target, HEADER)
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(0)
    seen = set()
    for _ in range(12):
        child = ctx.Process(target=_save_forever, args=(str(target),))
        child.start()
        time.sleep(rng.uniform(0.01, 0.15))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        doc, s_tensors, _ = read_session(target)  # never missing, never half written
        assert torch.equal(s_tensors["kv"], _State(200_000, seed=doc["turns"]).tensors["kv"])
        seen.add(doc["turns"])
    assert len(seen) > 1  # the children did replace the session
    save_session(fake_session(turns=99), target, HEADER, overwrite=True)  # and the leftovers go away
    assert listing(tmp_path) == ["saved"] and len(listing(target)) == 3


# ---- 3. session files are untrusted --------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    target = tmp_path / "saved"
    save_session(fake_session(), target, HEADER)
    return target


def _set(doc, path, value):
    keys = path.split(".")
    d = doc
    for k in keys[:-1]:
        d = d[int(k)] if isinstance(d, list) else d[k]
    last = keys[-1]
    if value is KeyError:
        del d[last]
    elif isinstance(d, list):
        d[int(last)] = value
    else:
        d[last] = value


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("format_version", "2", "format version"),
        ("format_version", 99, "format version 99 is not supported"),
        ("format", "other", "format"),
        ("id", 5, "id: expected a string"),
        ("id", "", "id: expected a non-empty string"),
        ("turns", "1", "turns: expected a non-negative integer"),
        ("turns", -1, "turns: expected a non-negative integer"),
        ("turns", True, "turns"),
        ("turns", KeyError, "turns: missing"),
        ("model", ["x"], "model: expected a string"),
        ("strategy", "full", "strategy: expected an object"),
        ("history", {"role": "user"}, "history: expected a list"),
        ("history.0", "hi", "history[0]: expected a message"),
        ("history.0.role", "wizard", "history[0].role: 'wizard' is not a valid role"),
        ("history.0.role", "x" * 10_000, "history[0].role"),
        ("history.0.content", 5, "history[0].content: expected a string"),
        ("history.0.content", KeyError, "history[0].content: missing"),
        ("history.0.content", "\ud800", "not valid Unicode"),
        ("cached_ids", [1, "2"], "cached_ids[1]"),
        ("cached_ids", [1, -2], "cached_ids[1]"),
        ("token_ids", [1.5], "token_ids[0]"),
        ("token_ids", [2**40], "token_ids[0]"),
        ("token_ids", [True], "token_ids[0]"),
        ("strategy_meta", [], "strategy_meta: expected an object"),
        ("memory_meta", None, "memory_meta: expected an object"),
        ("dtype", 5, "dtype"),
        ("files", KeyError, "files: missing"),
        ("files.strategy", "strategy.safetensors", "files.strategy: expected an object"),
        ("files.strategy.name", "../../etc/passwd", "files.strategy.name"),
        ("files.memory.name", "/etc/passwd", "files.memory.name"),
        ("files.strategy.name", "memory-0123456789abcdef.safetensors", "files.strategy.name"),
        ("files.strategy.sha256", "zz", "files.strategy.sha256"),
        ("files.strategy.size", "12", "files.strategy.size"),
    ],
)
def test_documents_are_checked_against_the_schema(saved, field, value, fragment):
    doc = doc_of(saved)
    _set(doc, field, value)
    write_doc(saved, doc)
    with pytest.raises(SessionError) as e:
        read_session(saved)
    msg = str(e.value)
    assert fragment in msg and "saved" in msg
    assert len(msg) < 800  # never the whole bad value


def test_old_saves_without_token_ids_still_read(saved):
    doc = doc_of(saved)
    del doc["token_ids"]
    write_doc(saved, doc)
    assert "token_ids" not in read_session(saved)[0]


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b"{not json", "not valid JSON"),
        (b'{"format_version": 2, "turns": 1', "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"id": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"[1, 2]", "expected a JSON object"),
        (b'{"format_version": NaN}', "NaN"),
        (b"", "not valid JSON"),
    ],
)
def test_unreadable_documents_are_session_errors(saved, raw, fragment):
    (saved / "session.json").write_bytes(raw)
    with pytest.raises(SessionError, match=fragment) as e:
        read_session(saved)
    assert "session.json" in str(e.value)


def test_a_flipped_byte_in_a_tensor_file_is_refused(saved):
    path = saved / doc_of(saved)["files"]["strategy"]["name"]
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # inside the tensor data: safetensors alone would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(SessionError, match="corrupted") as e:
        read_session(saved)
    assert path.name in str(e.value)


def test_a_missing_or_truncated_tensor_file_is_refused(saved):
    doc = doc_of(saved)
    memory = saved / doc["files"]["memory"]["name"]
    memory.write_bytes(memory.read_bytes()[:10])
    with pytest.raises(SessionError, match="corrupted"):
        read_session(saved)
    memory.unlink()
    with pytest.raises(SessionError, match="missing") as e:
        read_session(saved)
    assert memory.name in str(e.value)


def test_garbage_tensor_files_with_matching_checksums_are_session_errors(saved):
    doc = doc_of(saved)
    path = saved / doc["files"]["strategy"]["name"]
    for junk in (b"\x00" * 64, b"\xff" * 8 + b"{}", b"garbage"):
        path.write_bytes(junk)
        doc["files"]["strategy"].update(size=len(junk), sha256=hashlib.sha256(junk).hexdigest())
        write_doc(saved, doc)
        with pytest.raises(SessionError, match="unreadable") as e:
            read_session(saved)
        assert path.name in str(e.value)


def test_a_session_json_that_is_a_folder_or_a_path_that_is_a_file(tmp_path, saved):
    with pytest.raises(SessionError, match="not a saved session"):
        read_session(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SessionError, match="not a saved session"):
        read_session(tmp_path / "file")
    (saved / "session.json").unlink()
    (saved / "session.json").mkdir()
    with pytest.raises(SessionError, match="session.json"):
        read_session(saved)


def test_recorded_dtype_must_match_the_tensors(saved):
    doc = doc_of(saved)
    assert doc["dtype"] == "float32"
    doc["dtype"] = "float16"
    write_doc(saved, doc)
    with pytest.raises(SessionError, match="'kv' is float32, the session recorded float16"):
        read_session(saved)


def test_a_dtype_other_than_the_engines_is_refused(tmp_path):
    s = Session("s", _State(dtype=torch.bfloat16), _State(2))
    save_session(s, tmp_path / "bf16", HEADER)
    doc = read_session(tmp_path / "bf16")[0]
    assert doc["dtype"] == "bfloat16,float32"  # mixed: strategy bf16, memory f32
    check_dtype(doc, torch.bfloat16)
    with pytest.raises(SessionError, match="float16"):
        check_dtype(doc, torch.float16)
    s = Session("s", _State(dtype=torch.float16), _State(2, dtype=torch.float16))
    save_session(s, tmp_path / "f16", HEADER)
    doc = read_session(tmp_path / "f16")[0]
    assert doc["dtype"] == "float16"
    check_dtype(doc, torch.float16)
    check_dtype(doc, "float16")
    with pytest.raises(SessionError, match="holds float16 tensors, this engine's model runs in float32"):
        check_dtype(doc, torch.float32, "f16")
    with pytest.raises(SessionError, match="float32"):
        check_compatible(doc, {**HEADER, "dtype": torch.float32}, "f16")
    check_compatible(doc, HEADER)  # without a dtype in the header, as before


# ---- 4. places that cannot be written ------------------------------------------------------------------------
def test_permission_errors_while_saving_are_session_errors(tmp_path, monkeypatch):
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    with monkeypatch.context() as m:
        m.setattr(session_mod.tempfile, "mkdtemp", denied)
        with pytest.raises(SessionError, match="Permission denied"):
            save_session(fake_session(), tmp_path / "new", HEADER)
    save_session(fake_session(), tmp_path / "saved", HEADER)
    with monkeypatch.context() as m:
        m.setattr(session_mod.os, "replace", denied)
        with pytest.raises(SessionError, match="Permission denied"):
            save_session(fake_session(turns=2), tmp_path / "saved", HEADER, overwrite=True)
    assert read_session(tmp_path / "saved")[0]["turns"] == 1
    assert listing(tmp_path) == ["saved"] and len(listing(tmp_path / "saved")) == 3


def test_a_parent_that_is_a_file_is_a_session_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SessionError, match="parent folder"):
        save_session(fake_session(), tmp_path / "file" / "s", HEADER)
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_a_read_only_folder_is_a_session_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(SessionError, match="Permission denied"):
            save_session(fake_session(), ro / "s", HEADER)
        with pytest.raises(SessionError):
            save_session(fake_session(), ro / "deeper" / "s", HEADER)
    finally:
        ro.chmod(0o755)
    assert listing(ro) == []


def test_a_session_busy_for_too_long_is_a_session_error(tmp_path):
    s = fake_session()
    s.lock.acquire()
    try:
        with pytest.raises(SessionError, match="busy"):
            save_session(s, tmp_path / "x", HEADER, wait_s=0.05)
    finally:
        s.lock.release()


# ---- through the Engine on a tiny model -----------------------------------------------------------------------
def test_engine_save_overwrite_and_restore(tiny_model, tmp_path):
    engine = Engine(tiny_model("llama"), generation={"max_new_tokens": 4})
    engine.chat("hi", session_id="s")
    path = engine.save_session("s", tmp_path / "saved")
    with pytest.raises(SessionError, match="overwrite=True"):
        engine.save_session("s", tmp_path / "saved")
    engine.chat("more", session_id="s")
    engine.save_session("s", tmp_path / "saved", overwrite=True)
    other = Engine(engine.loaded, generation={"max_new_tokens": 4})
    restored = other.load_session(path)
    assert restored.turns == 2 and restored.history == engine.session("s").history
    doc = read_session(path)[0]
    check_dtype(doc, engine.loaded.dtype, str(path))
    assert doc["dtype"] == str(engine.loaded.dtype).removeprefix("torch.")
    assert other.chat("again", session_id="s").text == engine.chat("again", session_id="s").text


def test_engine_reads_a_version_1_save_and_replaces_it(tiny_model, tmp_path):
    from safetensors.torch import save_file

    engine = Engine(tiny_model("llama"), generation={"max_new_tokens": 4})
    engine.chat("hi", session_id="s")
    path = Path(engine.save_session("s", tmp_path / "v2"))
    doc, s_tensors, m_tensors = read_session(path)
    v1 = tmp_path / "v1"
    v1.mkdir()
    save_file(s_tensors, str(v1 / "strategy.safetensors"))
    save_file(m_tensors, str(v1 / "memory.safetensors"))
    old = {k: v for k, v in doc.items() if k not in ("format", "files", "dtype")}
    write_doc(v1, {**old, "format_version": 1})
    assert Engine(engine.loaded).load_session(v1).turns == 1
    with pytest.raises(SessionError, match="overwrite=True"):
        engine.save_session("s", v1)
    engine.save_session("s", v1, overwrite=True)
    assert "strategy.safetensors" not in listing(v1) and len(listing(v1)) == 3
    assert Engine(engine.loaded).load_session(v1).turns == 1
