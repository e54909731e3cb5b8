"""``longctx serve PIPELINE.yaml``: load the pipeline's engine, then serve it with uvicorn.

The core CLI (``longctx_llm.cli``) parses the arguments with :class:`~longctx_serve.command.ServeCommand`, which this
distribution registers under the entry-point group ``longctx_llm.commands``, and it imports this module only when
``serve`` runs; ``python -m longctx_serve ARGS`` is the same command.
"""

from __future__ import annotations

import logging
import sys
from typing import Mapping, Optional, Sequence

from longctx_llm.errors import ConfigError, LongctxError

from .app import api_key_from_env, create_app
from .limits import OPTIONS, RequestLimits

logger = logging.getLogger("longctx_serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve_pipeline(
    pipeline: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: Optional[str] = None,
    model_name: Optional[str] = None,
    max_sessions: int = 256,
    limits: Optional[Mapping[str, int]] = None,
    batching: Optional[Mapping[str, int]] = None,
) -> int:
    """Load the pipeline's model (errors surface here, not on the first request) and serve until Ctrl-C.

    ``limits``: :class:`~longctx_serve.limits.RequestLimits` fields to change (``longctx serve --max-stop`` ...).
    ``batching``: the pipeline's ``batching`` fields to change (``--max-batch``, ``--max-batch-tokens``,
    ``--max-queue``).
    """
    import uvicorn

    from longctx_llm import Engine
    from longctx_llm.config import load_config

    if not 0 <= port <= 65535:
        raise ConfigError(f"--port: {port} is not a TCP port (valid: 0-65535)")
    if max_sessions < 1:
        raise ConfigError(f"--max-sessions: must be >= 1, got {max_sessions}")
    request_limits = _request_limits(limits or {})
    config = load_config(pipeline)
    if batching:
        config.batching = _batching(config.batching, batching)
    engine = Engine.from_config(config)
    _ = engine.loaded  # load and validate the model now
    api_key = api_key_from_env(api_key)
    if api_key is None and host not in LOCAL_HOSTS:
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    app = create_app(engine, api_key=api_key, model_name=model_name, max_sessions=max_sessions,
                     limits=request_limits)
    print(f"longctx serve: {app.state.model_name} on http://{host}:{port}/v1"
          f"{' (API key required)' if api_key else ''}", file=sys.stderr)
    try:
        uvicorn.run(app, host=host, port=port, log_level="info")
    except OSError as e:  # e.g. the port is taken
        raise LongctxError(f"cannot serve on {host}:{port}: {e}") from e
    return 0


def _request_limits(values: Mapping[str, int]) -> RequestLimits:
    """The limits to serve with, a ConfigError naming the option for a value below 1 (before the model loads)."""
    for name, value in values.items():
        if type(value) is not int or value < 1:
            raise ConfigError(f"{OPTIONS.get(name, name)}: must be an integer >= 1, got {value!r}")
    try:
        return RequestLimits(**values)
    except TypeError as e:  # an unknown name (a caller's typo)
        raise ConfigError(f"serve limits: {e}") from None


def _batching(current, values: Mapping[str, int]):
    """The pipeline's batching options with the command line's on top; a ConfigError naming the option."""
    from pydantic import ValidationError

    from longctx_llm.config import BatchingConfig, format_validation_error

    try:
        return BatchingConfig(**{**current.model_dump(), **values})
    except ValidationError as e:
        msg = format_validation_error(e)
        for name in values:
            msg = msg.replace(name, "--" + name.replace("_", "-"))
        raise ConfigError(msg) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m longctx_serve ARGS`` = ``longctx serve ARGS`` (one parser, in the core CLI)."""
    from longctx_llm.cli import main as longctx_main

    return longctx_main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
