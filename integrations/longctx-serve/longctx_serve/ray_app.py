"""Scale-out over Ray Serve: N engine replicas (one per GPU) behind one router, sessions pinned to one replica.

    python -m longctx_serve.ray_app PIPELINE.yaml --replicas 4 --port 8000

Layout: each replica is its own one-replica deployment ``LongctxReplica{i}`` that builds the pipeline's engine in
its constructor and runs ``create_app(engine)`` in-process; an ingress deployment ``LongctxRouter`` receives every
HTTP request, takes its session id (the ``X-Session-Id`` header, else the JSON body's ``user``, exactly as the
single-process server does) and forwards it to replica ``sha256(session id) mod N``. The mapping is a pure function
of the id and N, so every request of a session reaches the replica that holds its state (no routing heuristic, no
timing); requests without a session id are spread round-robin. Every response carries ``X-Replica: replica-<i>``.

When a replica dies, Ray Serve restarts it under the same deployment, so its sessions keep mapping to it, but their
model-side state is gone: the next request of such a session is served from the history the client resends (OpenAI
clients resend it every turn), as a new session would be. Requests in flight on the dead replica fail. Changing N
re-maps most sessions (same consequence: their state is rebuilt from the resent history).

This module is the only one that imports ray (``pip install 'longctx-serve[ray]'``); the core never does.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence, Union

from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from .app import SESSION_HEADER, api_key_from_env, create_app

logger = logging.getLogger("longctx_serve")

REPLICA_HEADER = "X-Replica"
# hop-by-hop or length headers that the router recomputes for the body it streams
_DROP_HEADERS = {"content-length", "transfer-encoding", "connection"}

Pipeline = Union[str, os.PathLike, dict]


def _pipeline_config(pipeline: Pipeline):
    from longctx_llm.config import load_config, parse_config

    return parse_config(pipeline) if isinstance(pipeline, dict) else load_config(pipeline)


def replica_index(session_id: str, replicas: int) -> int:
    """The replica that serves ``session_id``: stable across processes and restarts (unlike ``hash()``)."""
    digest = hashlib.sha256(session_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % replicas


def session_id_of(headers: Any, body: bytes) -> Optional[str]:
    """The session id the app would use: the ``X-Session-Id`` header, else a JSON object body's ``user``."""
    sid = headers.get(SESSION_HEADER)
    if sid:
        return sid
    if not body:
        return None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # the replica answers the error
        return None
    user = data.get("user") if isinstance(data, dict) else None
    return user if isinstance(user, str) and user else None


async def _asgi_events(app, method: str, path: str, query: bytes, headers: list, body: bytes) -> AsyncIterator:
    """Run one HTTP request through an ASGI app in this process: yields ``{"status", "headers"}``, then body chunks."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode("latin-1"),
        "query_string": query, "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80),
    }
    messages: asyncio.Queue = asyncio.Queue()
    finished = asyncio.Event()
    body_sent = False

    async def receive():
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()  # the client "disconnects" only once the response is over (or abandoned)
        return {"type": "http.disconnect"}

    async def send(message):
        await messages.put(message)

    async def run():
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            message = await messages.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                yield {"status": message["status"],
                       "headers": [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]]}
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
    finally:
        finished.set()
        if not task.done():
            task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception) as e:  # noqa: BLE001 - the app answers its own errors
            logger.debug("request task ended with %r", e)


@serve.deployment(max_ongoing_requests=64, health_check_period_s=10)
class LongctxReplica:
    """One engine and its app; a one-replica deployment per GPU (``ray_actor_options={"num_gpus": 1}``)."""

    def __init__(self, pipeline: Pipeline, replica_name: str, api_key: Optional[str] = None,
                 model_name: Optional[str] = None, max_sessions: int = 256):
        from longctx_llm import Engine

        engine = Engine.from_config(_pipeline_config(pipeline))
        _ = engine.loaded  # load and validate now: a bad pipeline fails the deployment, not the first request
        self.replica_name = replica_name
        self.app = create_app(engine, api_key=api_key, model_name=model_name, max_sessions=max_sessions)

    async def forward(self, method: str, path: str, query: bytes, headers: list, body: bytes) -> AsyncIterator:
        async for event in _asgi_events(self.app, method, path, query, headers, body):
            if isinstance(event, dict):
                event["headers"].append((REPLICA_HEADER, self.replica_name))
            yield event


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class LongctxRouter:
    """The HTTP ingress: session id -> ``replica_index`` -> that replica's handle; streams its response back."""

    def __init__(self, *replicas):
        if not replicas:
            raise ValueError("LongctxRouter needs at least one replica")
        self.replicas = list(replicas)
        self._next = itertools.count()

    def pick(self, session_id: Optional[str]) -> int:
        if session_id is None:
            return next(self._next) % len(self.replicas)
        return replica_index(session_id, len(self.replicas))

    async def __call__(self, request: Request):
        body = await request.body()
        index = self.pick(session_id_of(request.headers, body))
        stream = self.replicas[index].options(stream=True).forward.remote(
            request.method, request.url.path, request.url.query.encode("latin-1"), request.headers.raw, body)
        try:
            head = await stream.__anext__()
        except Exception as e:  # noqa: BLE001 - e.g. the replica died and is being restarted
            logger.warning("replica-%d failed: %s", index, e)
            return JSONResponse(
                {"error": {"message": f"replica-{index} is unavailable ({type(e).__name__}); retry the request",
                           "type": "server_error", "param": None, "code": "replica_unavailable"}},
                status_code=503, headers={REPLICA_HEADER: f"replica-{index}"})

        async def chunks():
            try:
                async for chunk in stream:
                    yield chunk
            finally:
                stream.cancel()  # a no-op once the stream is over; stops the replica when the client went away

        headers = {k: v for k, v in head["headers"] if k.lower() not in _DROP_HEADERS}
        return StreamingResponse(chunks(), status_code=head["status"], headers=headers)


def build(
    pipeline: Pipeline,
    replicas: Optional[int] = None,
    *,
    api_key: Optional[str] = None,
    model_name: Optional[str] = None,
    max_sessions: int = 256,
    num_gpus: Optional[float] = None,
    num_cpus: float = 1,
):
    """The Ray Serve application: ``replicas`` engine deployments (default: one per GPU of the Ray cluster, else 1)
    and the router. ``num_gpus`` per replica defaults to 1 when the cluster has GPUs, else 0 (CPU replicas).
    A pipeline path is made absolute here, since replicas may run in another directory or on another node
    (which then needs the file at the same path; a dict travels with the application)."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    if num_gpus is None:
        num_gpus = 1 if gpus >= 1 else 0
    if replicas is None:
        replicas = max(1, int(gpus // num_gpus) if num_gpus else 1)
    if replicas < 1:
        raise ValueError(f"replicas: must be >= 1, got {replicas}")
    if not isinstance(pipeline, dict):
        pipeline = str(Path(pipeline).expanduser().resolve())
    handles = [
        LongctxReplica.options(name=f"LongctxReplica{i}", num_replicas=1,
                               ray_actor_options={"num_gpus": num_gpus, "num_cpus": num_cpus})
        .bind(pipeline, f"replica-{i}", api_key, model_name, max_sessions)
        for i in range(replicas)
    ]
    return LongctxRouter.bind(*handles)


def run(pipeline: Pipeline, replicas: Optional[int] = None, *, host: str = "127.0.0.1", port: int = 8000,
        name: str = "longctx", **build_kwargs):
    """Start Serve's HTTP proxy on ``host:port`` and deploy :func:`build`'s application (Ray must be initialised
    or startable); returns the router's handle once every replica has loaded its model."""
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build(pipeline, replicas, **build_kwargs), name=name, route_prefix="/")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    import ray

    p = argparse.ArgumentParser(prog="python -m longctx_serve.ray_app",
                                description="Serve a pipeline with N replicas behind Ray Serve (sessions pinned).")
    p.add_argument("pipeline", help="pipeline YAML file")
    p.add_argument("--replicas", type=int, default=None, help="engine replicas (default: one per GPU, else 1)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or LONGCTX_API_KEY)")
    p.add_argument("--model-name", default=None)
    p.add_argument("--max-sessions", type=int, default=256, help="sessions kept per replica")
    p.add_argument("--num-gpus", type=float, default=None, help="GPUs per replica (default 1 if the cluster has any)")
    p.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica (default 1)")
    p.add_argument("--address", default=None, help="an existing Ray cluster (default: RAY_ADDRESS, else a local one)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port: {args.port} is not a TCP port (valid: 0-65535)")
    if args.max_sessions < 1:
        p.error(f"--max-sessions: must be >= 1, got {args.max_sessions}")
    _pipeline_config(args.pipeline)  # a bad pipeline file is an error here, before any replica starts
    ray.init(address=args.address, include_dashboard=False)
    api_key = api_key_from_env(args.api_key)
    run(args.pipeline, args.replicas, host=args.host, port=args.port, api_key=api_key,
        model_name=args.model_name, max_sessions=args.max_sessions, num_gpus=args.num_gpus, num_cpus=args.num_cpus)
    print(f"longctx serve (ray): http://{args.host}:{args.port}/v1{' (API key required)' if api_key else ''}",
          file=sys.stderr)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill PID` shuts Serve and the local Ray down as Ctrl-C does
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # a one-line error, as `longctx serve` gives
        from longctx_llm.errors import LongctxError

        if isinstance(e, LongctxError):
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
