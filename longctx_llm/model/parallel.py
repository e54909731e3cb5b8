"""The processes of a tensor-parallel run: which one this is, the process group they share, and the checks a
pipeline's ``model.tp`` passes before a model loads.

``torchrun --nproc-per-node N`` starts N processes and tells each its place in the environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``). transformers shards the model over them
(:func:`~longctx_llm.model.loading.load_model`); this module sets up ``torch.distributed`` first, so that the
processes can also agree on a converted model folder and exchange the engine's calls
(:mod:`longctx_llm.runtime.tensor_parallel`) over a CPU (gloo) group of their own, and it checks that ``tp`` fits the
processes, the device and the model's heads, each misfit a :class:`~longctx_llm.errors.ConfigError`.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Optional

import torch

from ..errors import ConfigError, ModelLoadError

#: how long a collective of the model may wait (loading a large model's shards takes a while on every process)
MODEL_TIMEOUT = timedelta(hours=2)
#: how long a process waits for the next message on the control group (a server may sit idle for days)
CONTROL_TIMEOUT = timedelta(days=365)
COMMAND = "torchrun --nproc-per-node {tp} -m longctx_llm.cli serve|run|eval PIPELINE.yaml ..."


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started."""

    rank: int
    size: int
    local_rank: int
    local_size: int

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: Optional[int] = None) -> int:
    raw = os.environ.get(name)
    if raw is None:
        if default is None:
            raise ConfigError(f"{name} is not set, but torchrun sets it (the environment names RANK and WORLD_SIZE)")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw[:40]!r} is not an integer (torchrun sets it)") from None
    if value < 0:
        raise ConfigError(f"environment variable {name}={value} is negative (torchrun sets it)")
    return value


def world() -> Optional[World]:
    """This process's place, or None when no launcher started several processes (``WORLD_SIZE`` unset or 1)."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    size = _env_int("WORLD_SIZE")
    if size <= 1:
        return None
    rank = _env_int("RANK")
    if rank >= size:
        raise ConfigError(f"environment variable RANK={rank} is not below WORLD_SIZE={size}")
    return World(rank, size, _env_int("LOCAL_RANK", rank), _env_int("LOCAL_WORLD_SIZE", size))


def check_world(tp: int) -> Optional[World]:
    """The processes a ``model.tp`` of ``tp`` needs: exactly ``tp`` of them, all on this host, started by torchrun."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ConfigError(f"model.tp: must be an integer >= 1, got {tp!r}")
    w = world()
    if tp == 1:
        return w
    if w is None:
        raise ConfigError(
            f"model.tp: {tp} needs {tp} processes started by torchrun, but this process was started alone (no "
            f"WORLD_SIZE/RANK in the environment); run: {COMMAND.format(tp=tp)}, or set model.tp: 1"
        )
    if w.size != tp:
        raise ConfigError(
            f"model.tp: {tp} does not match the {w.size} processes torchrun started (WORLD_SIZE={w.size}); valid: "
            f"model.tp: {w.size}, or torchrun --nproc-per-node {tp}"
        )
    if w.local_size != w.size:
        raise ConfigError(
            f"model.tp: {tp} processes span several hosts (LOCAL_WORLD_SIZE={w.local_size}, WORLD_SIZE={w.size}); "
            "tensor parallel runs on the devices of one host (valid: torchrun --nnodes 1)"
        )
    return w


def resolve_device(device: str, tp: int, w: World) -> torch.device:
    """The device this process's shard lives on: ``cuda:LOCAL_RANK`` with GPUs, else the CPU."""
    cuda = torch.cuda.is_available()
    if device.startswith("cuda:"):
        raise ConfigError(
            f"model.device: {device!r} names one GPU, but with model.tp: {tp} each process takes the GPU of its "
            "local rank (valid with tp > 1: auto, cuda, cpu)"
        )
    if device == "cpu" and cuda:
        raise ConfigError(
            f"model.device: 'cpu' with model.tp: {tp} on a host with CUDA devices: transformers places "
            "tensor-parallel shards on the accelerator (valid: auto, cuda; or hide the GPUs with "
            "CUDA_VISIBLE_DEVICES= to shard over CPU processes)"
        )
    if device == "cuda" and not cuda:
        raise ConfigError(f"model.device: 'cuda' requested with model.tp: {tp} but no CUDA device is available "
                          "(valid: cpu, auto)")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"model.device: invalid device {device!r} (valid with tp > 1: auto, cuda, cpu)")
    if not cuda:
        return torch.device("cpu")
    found = torch.cuda.device_count()
    if found < w.local_size:
        raise ConfigError(
            f"model.tp: {tp} needs {w.local_size} CUDA devices on this host (one per process), found {found} "
            f"(valid: model.tp <= {found}, or CUDA_VISIBLE_DEVICES= to shard over CPU processes)"
        )
    return torch.device("cuda", w.local_rank)


def check_heads(tp: int, heads: int, kv_heads: int, has_plan: bool, model_type: str) -> None:
    """``tp`` must divide the attention heads and the key/value heads, and transformers must have a plan for the
    architecture (which projections it splits)."""
    if not has_plan:
        raise ConfigError(
            f"model.tp: {tp}, but transformers has no tensor-parallel plan for model_type {model_type!r} "
            "(valid: model.tp: 1)"
        )
    if heads % tp or kv_heads % tp:
        valid = [d for d in range(1, max(heads, 1) + 1) if heads % d == 0 and kv_heads % d == 0]
        raise ConfigError(
            f"model.tp: {tp} does not divide the model's {heads} attention heads and {kv_heads} key/value heads "
            f"(valid: {', '.join(map(str, valid))})"
        )


# ------------------------------------------------------------------------------------------------------------------
# The process group
# ------------------------------------------------------------------------------------------------------------------

_CONTROL: Any = None


def initialize(w: World) -> None:
    """Join the processes (once): the default group for the model's collectives (NCCL for GPUs, gloo for CPUs) and
    a gloo group of its own for messages (:func:`broadcast`). Every process of the run must call it; the groups are
    left again at exit (:func:`shutdown`)."""
    import torch.distributed as dist

    global _CONTROL
    if not dist.is_initialized():
        atexit.register(shutdown)
        backend = "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(w.local_rank)
            backend = "cpu:gloo,cuda:nccl"
        dist.init_process_group(backend=backend, rank=w.rank, world_size=w.size, timeout=MODEL_TIMEOUT)
    if _CONTROL is None:
        _CONTROL = dist.new_group(backend="gloo", timeout=CONTROL_TIMEOUT)


def shutdown() -> None:
    """Leave the process groups (idempotent). A process that exits still in a gloo group can abort at interpreter
    teardown ("terminate called without an active exception", SIGABRT) while gloo's worker threads still hold
    work: the end of every tensor-parallel run calls this, and :func:`initialize` registers it to run at exit."""
    import torch.distributed as dist

    global _CONTROL
    _CONTROL = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any = None) -> Any:
    """Rank 0's ``obj`` on every process (the others pass nothing). Pickled: plain data, tensors, configs."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_CONTROL)
    return box[0]


def on_leader(fn: Callable[[], Any], w: World) -> Any:
    """Run ``fn`` on rank 0 only (e.g. writing a converted model folder) while the others wait; its result, or its
    error as a :class:`~longctx_llm.errors.ModelLoadError`, reaches every process."""
    result, error = None, None
    if w.is_leader:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - every process must hear of it, or the others wait forever
            error = e
    sent = broadcast((result, None if error is None else f"{type(error).__name__}: {error}"))
    if error is not None:
        raise error
    if sent[1] is not None:
        raise ModelLoadError(f"rank 0 failed: {sent[1]}")
    return sent[0]
