"""The FastAPI app factory: ``create_app(engine, api_key=None, model_name=None)``.

Endpoints: ``POST /v1/chat/completions`` (``stream: true`` as server-sent events), ``POST /v1/completions``,
``GET /v1/models``, ``GET /health`` (never behind the key).

Sessions: a request with a session id (header ``X-Session-Id``, else the body's ``user``) runs in the engine's
session of that id, so its cache (and a compressing memory's slots) carry over and a client that resends the whole
history pays only for the new turn. Without an id every request is stateless. At most ``max_sessions`` sessions
are kept; the least recently used one is dropped beyond that.

Limits (:mod:`.limits`): a request's body size, JSON nesting, integer length, ``stop`` strings and ``tools`` are
bounded before any work is done for it (413 or 400, naming the limit and the ``longctx serve`` option raising it).

The app holds no global state: everything hangs off the engine it is given, so a process may serve several apps,
and a Ray Serve replica can build its engine in its constructor and wrap ``create_app(engine)``.
"""

from __future__ import annotations

import asyncio

import logging
import os
import secrets
import threading
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Iterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from longctx_llm import Engine, __version__
from longctx_llm.chat import turns
from longctx_llm.config import format_validation_error
from longctx_llm.runtime import aio

from . import convert, sse
from .errors import APIError, to_api_error
from .limits import RequestLimits, check_request, parse_json, read_body
from .schemas import ChatCompletionRequest, CompletionRequest

logger = logging.getLogger("longctx_serve")

SESSION_HEADER = "X-Session-Id"
API_KEY_ENV = "LONGCTX_API_KEY"


class SessionTable:
    """The session ids this server created, most recently used last; drops the oldest beyond ``limit``."""

    def __init__(self, engine: Engine, limit: int):
        self.engine = engine
        self.limit = limit
        self._ids: "OrderedDict[str, None]" = OrderedDict()
        self._lock = threading.Lock()

    def touch(self, session_id: str) -> None:
        with self._lock:
            self._ids[session_id] = None
            self._ids.move_to_end(session_id)
            while len(self._ids) > self.limit:
                old, _ = self._ids.popitem(last=False)
                self.engine.reset_session(old)
                logger.info("session %r dropped (more than %d sessions)", old, self.limit)


def _completion_events(engine: Engine, prompt: str, gen: dict) -> Iterator[Any]:
    """Text deltas of a plain-text completion, then its :class:`~longctx_llm.runtime.generation.Completion`."""
    stream = engine.stream(prompt, **gen)
    try:
        yield from stream
    finally:
        if stream.completion is None:
            stream.close()
    yield stream.completion


def _error_response(err: APIError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else {}
    if err.retry_after is not None:
        headers["Retry-After"] = str(err.retry_after)
    return JSONResponse(err.body(), status_code=err.status, headers=headers or None)


def create_app(
    engine: Engine,
    api_key: Optional[str] = None,
    model_name: Optional[str] = None,
    *,
    max_sessions: int = 256,
    limits: Optional[RequestLimits] = None,
) -> FastAPI:
    """An OpenAI-compatible app over ``engine``.

    ``api_key``: when set, every ``/v1`` request needs ``Authorization: Bearer <key>`` (401 otherwise).
    ``model_name``: the name clients give as ``model`` (default: the engine's model source); another is a 404.
    ``limits``: bounds on one request's body, nesting, ``stop`` and ``tools`` (default: :class:`RequestLimits`).
    """
    if max_sessions < 1:
        raise ValueError(f"max_sessions: must be >= 1, got {max_sessions}")
    served = model_name or engine.model_name
    engine.refuse_when_full()  # beyond the batch and its queue a client gets 503 + Retry-After, never a hang
    created_at = convert.now()
    sessions = SessionTable(engine, max_sessions)
    limits = limits or RequestLimits()
    app = FastAPI(title="longctx-llm", version=__version__, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.model_name = served
    app.state.sessions = sessions
    app.state.limits = limits

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise APIError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'",
                           type="invalid_request_error", code="invalid_api_key")

    async def parse(request: Request, model: type[BaseModel]) -> Any:
        body = parse_json(await read_body(request, limits), limits)
        if not isinstance(body, dict):
            raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}",
                           code="invalid_json")
        try:
            req = model.model_validate(body)
        except ValidationError as e:
            msg = format_validation_error(e)
            raise APIError(400, msg, param=str(e.errors()[0]["loc"][0]) if e.errors()[0]["loc"] else None,
                           code="invalid_value") from None
        if req.model != served:
            raise APIError(404, f"model {req.model!r} is not served here (valid: {served})", param="model",
                           code="model_not_found")
        check_request(req, limits)
        return req

    def session_of(request: Request, body: Any) -> Optional[str]:
        sid = request.headers.get(SESSION_HEADER) or getattr(body, "user", None)
        if sid:
            sessions.touch(sid)
        return sid or None

    def guarded(handler: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Any]]:
        """Every failure of a request becomes its JSON error; nothing reaches the server loop."""

        async def endpoint(request: Request):
            try:
                check_key(request)
                return await handler(request)
            except Exception as e:  # noqa: BLE001
                return _error_response(to_api_error(e))

        endpoint.__name__ = handler.__name__
        return endpoint

    async def chat_completions(request: Request):
        req = await parse(request, ChatCompletionRequest)
        sid = session_of(request, req)
        turn = await run_in_threadpool(convert.chat_turn, engine, req, sid)
        rid, created = convert.new_id("chatcmpl"), convert.now()
        if not req.stream:
            reply = await run_in_threadpool(turns.run, engine, turn, served)
            return JSONResponse(convert.chat_completion(reply, served, rid, created))
        events = aio.aiter_sync(lambda: turns.events(engine, turn, served))
        first = await _first(events)
        body = sse.chat_stream(first, events, rid, created, served, req.include_usage)
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        prompts = convert.completion_prompts(req)
        gen = convert.gen_arguments(req, req.max_tokens)
        rid, created = convert.new_id("cmpl"), convert.now()
        if not req.stream:
            # all at once: the engine's scheduler decodes them as rows of one forward
            done = await asyncio.gather(*(run_in_threadpool(lambda p=p: engine.complete(p, **gen)) for p in prompts))
            return JSONResponse(convert.text_completion(
                [(c.text, c.finish_reason) for c in done], served, rid, created,
                sum(c.prompt_tokens for c in done), sum(c.completion_tokens for c in done),
            ))
        if len(prompts) != 1:
            raise APIError(400, f"prompt: streaming takes one prompt, got a list of {len(prompts)}", param="prompt",
                           code="invalid_value")
        events = aio.aiter_sync(lambda: _completion_events(engine, prompts[0], gen))
        first = await _first(events)
        body = sse.completion_stream(first, events, rid, created, served, req.include_usage)
        return StreamingResponse(body, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    def model_card() -> dict:
        return {"id": served, "object": "model", "created": created_at, "owned_by": "longctx"}

    async def list_models(request: Request):
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request):
        name = request.path_params["model"]
        if name != served:
            raise APIError(404, f"model {name!r} is not served here (valid: {served})", param="model",
                           code="model_not_found")
        return JSONResponse(model_card())

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": served, "sessions": len(engine.sessions())})

    app.add_api_route("/v1/chat/completions", guarded(chat_completions), methods=["POST"])
    app.add_api_route("/v1/completions", guarded(completions), methods=["POST"])
    app.add_api_route("/v1/models", guarded(list_models), methods=["GET"])
    app.add_api_route("/v1/models/{model:path}", guarded(get_model), methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):  # unknown route, wrong method
        kind = "not_found" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                        type=kind, code=str(exc.status_code)))

    return app


async def _first(events):
    """The first event of a stream, awaited before the response starts (an immediate failure is a JSON error)."""
    try:
        return await events.__anext__()
    except BaseException:
        await events.aclose()
        raise


def api_key_from_env(explicit: Optional[str]) -> Optional[str]:
    return explicit or os.environ.get(API_KEY_ENV) or None
