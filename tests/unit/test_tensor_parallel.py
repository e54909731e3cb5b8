"""Tensor parallel (``model.tp``) in one process: every bad input is a clear error before a weight is read, and the
leader/follower protocol (rank 0 sends each engine call, the others run it) over an in-process pipe keeps a follower's
engine in the leader's state. The two-process runs are in test_tensor_parallel_processes.py."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import torch

from longctx_llm import ConfigError, Engine, ModelHandle, SessionError, load_pipeline
from longctx_llm.config import parse_config
from longctx_llm.model import hf_adapter, parallel
from longctx_llm.runtime import tensor_parallel
from longctx_llm.runtime.stream import TextStream

TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def no_weights_read(monkeypatch):
    """Fail the test if any model weights are loaded (the checks must come first)."""
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained ran before the tp checks")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(parallel, "initialize", lambda w: (_ for _ in ()).throw(AssertionError("joined a group")))


def torchrun_env(monkeypatch, size: int, rank: int = 0) -> None:
    """The environment torchrun gives one of ``size`` processes on one host."""
    for name, value in zip(TORCHRUN_ENV, (size, rank, rank, size)):
        monkeypatch.setenv(name, str(value))


def load(source, tp: int, device: str = "cpu") -> None:
    ModelHandle(str(source), device, "float32", tp=tp).get()


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, message", [
    (0, "model.tp: Input should be greater than or equal to 1, got 0"),
    ("two", "model.tp: Input should be a valid integer, unable to parse string as an integer, got 'two'"),
    (True, r"model.tp: Value error, must be a number of processes \(1, 2, ...\), got True"),
])
def test_tp_must_be_a_positive_integer(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"model": {"tp": value}})


def test_tp_without_torchrun_names_the_command(monkeypatch, tiny_model_dir, no_weights_read):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    engine = load_pipeline({"model": {"source": str(tiny_model_dir), "device": "cpu", "tp": 2}}).engine
    with pytest.raises(ConfigError) as e:
        _ = engine.loaded
    assert "model.tp: 2 needs 2 processes started by torchrun" in str(e.value)
    assert "torchrun --nproc-per-node 2 -m longctx_llm.cli serve|run|eval" in str(e.value)
    assert "or set model.tp: 1" in str(e.value)


def test_tp_must_equal_the_world_size(monkeypatch, tiny_model_dir, no_weights_read):
    torchrun_env(monkeypatch, 4)
    with pytest.raises(ConfigError, match=r"model.tp: 2 does not match the 4 processes torchrun started "
                                          r"\(WORLD_SIZE=4\); valid: model.tp: 4, or torchrun --nproc-per-node 2"):
        load(tiny_model_dir, 2)


def test_tp_across_hosts_is_refused(monkeypatch, tiny_model_dir, no_weights_read):
    torchrun_env(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="tensor parallel runs on the devices of one host"):
        load(tiny_model_dir, 2)


def test_a_tp_1_pipeline_under_a_torchrun_leader_is_refused(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(tensor_parallel, "_LEADER", tensor_parallel.Leader(tensor_parallel.Pipe(), 2))
    cfg = parse_config({"model": {"source": str(tiny_model_dir), "device": "cpu"}})
    with pytest.raises(ConfigError, match=r"model.tp: 1 does not match the 2 processes torchrun started "
                                          r"\(WORLD_SIZE=2\); valid: model.tp: 2, or start the command "
                                          r"without torchrun"):
        Engine.from_config(cfg)


@pytest.mark.parametrize("tp, valid", [(3, "1, 2"), (4, "1, 2")])
def test_tp_must_divide_the_heads(monkeypatch, tiny_model_dir, no_weights_read, tp, valid):
    torchrun_env(monkeypatch, tp)  # the tiny Llama: 4 attention heads, 2 key/value heads
    with pytest.raises(ConfigError, match=rf"model.tp: {tp} does not divide the model's 4 attention heads and 2 "
                                          rf"key/value heads \(valid: {valid}\)"):
        load(tiny_model_dir, tp)


def test_tp_of_an_architecture_without_a_plan(monkeypatch, no_weights_read):
    with pytest.raises(ConfigError, match="transformers has no tensor-parallel plan for model_type 'gpt2'"):
        parallel.check_heads(2, 4, 4, False, "gpt2")


@pytest.mark.parametrize("device, cuda, gpus, message", [
    ("cuda:1", False, 0, r"model.device: 'cuda:1' names one GPU, but with model.tp: 2 each process takes the GPU of "
                         r"its local rank \(valid with tp > 1: auto, cuda, cpu\)"),
    ("cuda", False, 0, r"model.device: 'cuda' requested with model.tp: 2 but no CUDA device is available"),
    ("auto", True, 1, r"model.tp: 2 needs 2 CUDA devices on this host \(one per process\), found 1 \(valid: "
                      r"model.tp <= 1"),
    ("cpu", True, 2, r"model.device: 'cpu' with model.tp: 2 on a host with CUDA devices"),
])
def test_tp_needs_a_device_that_holds_it(monkeypatch, tiny_model_dir, no_weights_read, device, cuda, gpus, message):
    torchrun_env(monkeypatch, 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(ConfigError, match=message):
        load(tiny_model_dir, 2, device)


def test_each_process_takes_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    w = parallel.World(rank=1, size=2, local_rank=1, local_size=2)
    assert parallel.resolve_device("auto", 2, w) == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parallel.resolve_device("auto", 2, w) == torch.device("cpu")


def test_sessions_are_not_saved_under_tp(tmp_path, tiny_model_dir):
    engine = Engine(ModelHandle(str(tiny_model_dir), "cpu", "float32", tp=2))
    with pytest.raises(SessionError, match=r"save_session: sessions cannot be saved or restored with model.tp: 2"):
        engine.save_session("x", tmp_path / "s")
    with pytest.raises(SessionError, match=r"load_session: sessions cannot be saved or restored with model.tp: 2"):
        engine.load_session(tmp_path / "s")


def test_model_info_counts_the_heads_of_one_process():
    from transformers import GPT2Config, LlamaConfig

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    info = hf_adapter.model_info(config, tp=2)
    assert (info.num_heads, info.num_kv_heads, info.head_dim, info.tp) == (2, 1, 16, 2)
    assert hf_adapter.model_info(config).num_heads == 4
    assert hf_adapter.has_tp_plan(config) and not hf_adapter.has_tp_plan(GPT2Config())


def test_a_command_runs_alone_without_torchrun(monkeypatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert tensor_parallel.run_command(lambda: 7, build=lambda cfg: None) == 7


# ---- the protocol, over an in-process pipe ------------------------------------------------------------------------

CALLS: list = []


def record(engine, value):
    """A module-level function run on every process through tensor_parallel.call."""
    CALLS.append((engine, value))
    return value * 2


@pytest.fixture
def leader_and_follower(monkeypatch, tiny_model_dir, tmp_path):
    """A leading engine (as rank 0 of a one-process 'world') and a follower thread with its own copy of the model."""
    pipe = tensor_parallel.Pipe()
    leader = tensor_parallel.Leader(pipe, 1)
    monkeypatch.setattr(tensor_parallel, "_LEADER", leader)
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    followers: list = []

    def build(cfg):  # the follower's engine: the same pipeline on its own model copy (not adopted)
        followers.append(Engine(ModelHandle(str(copy), "cpu", "float32"), strategy=cfg.strategy, memory=cfg.memory,
                                generation=cfg.generation))
        return followers[-1]

    thread = threading.Thread(target=tensor_parallel.follow, args=(build, pipe), daemon=True)
    thread.start()
    cfg = parse_config({"model": {"source": str(tiny_model_dir), "device": "cpu", "dtype": "float32"},
                        "generation": {"max_new_tokens": 5}})
    engine = Engine.from_config(cfg)

    def finish() -> None:  # stop the follower and wait until it has run every step
        leader.stop()
        thread.join(timeout=60)
        assert not thread.is_alive()

    yield engine, followers, finish
    finish()


def test_a_follower_runs_every_call_of_the_leader(leader_and_follower):
    engine, followers, finish = leader_and_follower
    CALLS.clear()
    assert isinstance(engine, Engine) and type(engine).__name__ == "TensorParallelEngine"
    first = engine.chat("Hello there", session_id="a").text
    stream = engine.stream_chat("Tell me more", session_id="a", max_new_tokens=8)
    assert isinstance(stream, TextStream)
    next(stream)
    stream.close()  # the follower closes its stream at the same token
    engine.chat("And then?", session_id="a")
    dropped = engine.stream_chat("Dropped", session_id="d")
    next(dropped)
    del dropped  # let go unclosed: the follower closes it at the next step
    engine.chat("After", session_id="d")
    engine.extend("raw", [5, 6, 7, 8])
    nll = engine.score(list(range(300, 330)))
    assert tensor_parallel.call(record, engine, 21) == 42
    completion = engine.complete("Once upon a time")
    engine.reset_session("a")
    assert engine.chat("Hello there", session_id="a").text == first
    engine.tokenize("not a step")
    finish()
    (follower,) = followers
    assert [value for _, value in CALLS] == [21, 21]
    assert {id(e) for e, _ in CALLS} == {id(engine), id(follower)}
    for sid in ("a", "d", "raw"):
        mine, theirs = engine.session(sid), follower.session(sid)
        assert theirs.history == mine.history and theirs.cached_ids == mine.cached_ids, sid
        assert theirs.state.seen == mine.state.seen, sid
    assert engine.sessions() == follower.sessions()
    assert follower.complete("Once upon a time").text == completion.text
    torch.testing.assert_close(follower.score(list(range(300, 330))), nll)


def test_a_second_request_on_a_busy_session_waits_outside_the_lock(leader_and_follower):
    engine, followers, finish = leader_and_follower
    first = engine.stream_chat("First", session_id="c", max_new_tokens=6)
    next(first)  # the session is held by this stream
    second: dict = {}
    t = threading.Thread(target=lambda: second.setdefault("text", engine.chat("Second", session_id="c").text))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # waiting for the session, not for the stream's steps
    rest = "".join(first)  # the stream's own steps still run
    t.join(timeout=60)
    assert not t.is_alive() and "text" in second and isinstance(rest, str)
    finish()
    assert followers[0].session("c").history == engine.session("c").history


def test_arguments_that_cannot_be_sent_are_an_input_error(leader_and_follower):
    from longctx_llm import InputError

    engine, _, _ = leader_and_follower
    with pytest.raises(InputError, match="cannot be sent to the other tensor-parallel processes"):
        engine.complete("hi", stop=[lambda: 0])


#: the engine's public names that never run the model nor change what a later call feeds it (reads, checks, the
#: tokenizer; ``session`` makes a fresh state, as the follower's own call does; saving is refused under tp; ``loaded``
#: is a step of its own, the model's first load)
NOT_STEPS = {"attention_span", "check_fits", "context_window", "count_tokens", "from_config", "get_session",
             "load_session", "loaded", "model_name", "params", "refuse_when_full", "render_chat", "save_session",
             "scheduler", "session", "session_wait_s", "sessions", "tokenize", "tokenizer"}


def test_every_public_engine_call_is_classified():
    """A new public engine call must say whether it runs the model (tensor_parallel.STEPS: every process runs it) or
    not (NOT_STEPS): a model call that only rank 0 runs would leave the other processes waiting forever."""
    public = {name for name in dir(Engine) if not name.startswith("_")}
    assert public - set(tensor_parallel.STEPS) - NOT_STEPS == set()
    assert set(tensor_parallel.STEPS) <= public and not set(tensor_parallel.STEPS) & NOT_STEPS
