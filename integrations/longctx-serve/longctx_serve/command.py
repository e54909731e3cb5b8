"""``longctx serve``: the command this distribution adds to the core CLI (entry-point group ``longctx_llm.commands``).

The core builds ``longctx serve``'s parser from :class:`ServeCommand` and calls :meth:`ServeCommand.run`; this
module imports neither FastAPI nor uvicorn, so every ``longctx`` command starts as fast as before. The server is
imported when ``serve`` runs (:func:`longctx_serve.cli.serve_pipeline`).
"""

from __future__ import annotations

import argparse

from longctx_llm.errors import LongctxError

from .limits import OPTIONS, RequestLimits

INSTALL = "pip install -e integrations/longctx-serve"
_HELP = {
    "max_request_bytes": "largest request body in bytes (a larger one gets 413)",
    "max_stop": "most stop strings in one request",
    "max_stop_chars": "longest stop string, in characters",
    "max_tools": "most tools in one request",
    "max_tool_bytes": "largest tool definition, in bytes of JSON",
}
#: ``longctx serve``'s request limits: option dest -> (default, help), the defaults those of :class:`RequestLimits`
SERVE_LIMITS = {name: (getattr(RequestLimits(), name), _HELP[name]) for name in OPTIONS}


class ServeCommand:
    """OpenAI-compatible HTTP server for a pipeline."""

    help = "OpenAI-compatible HTTP server for a pipeline"
    description = (
        "Serve a pipeline over an OpenAI-compatible API: /v1/chat/completions (streaming, tools, "
        "response_format), /v1/completions, /v1/models, /health. A session id (header X-Session-Id, else the "
        "request's 'user') keeps a conversation's cache between requests."
    )

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("pipeline", help="YAML pipeline file")
        p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
        p.add_argument("--port", type=int, default=8000, help="TCP port")
        p.add_argument("--api-key", default=None,
                       help="require 'Authorization: Bearer KEY' (default: $LONGCTX_API_KEY)")
        p.add_argument("--model-name", default=None, help="the model name clients send (default: the pipeline's model)")
        p.add_argument("--max-sessions", type=int, default=256, help="sessions kept (least recently used dropped)")
        for name, (default, text) in SERVE_LIMITS.items():
            p.add_argument(OPTIONS[name], type=int, default=default, help=text)
        p.add_argument("--max-batch", type=int, default=None,
                       help="most requests decoding at once, as rows of one forward (default: the pipeline's "
                            "batching.max_batch, 16); 1 runs each request on its own")
        p.add_argument("--max-batch-tokens", type=int, default=None,
                       help="prompt tokens fed per step between the running decodes (default: the pipeline's, 512)")
        p.add_argument("--max-queue", type=int, default=None,
                       help="requests waiting beyond --max-batch; one more is answered 503 with Retry-After "
                            "(default: the pipeline's, 256)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        try:
            from .cli import serve_pipeline
        except ImportError as e:  # FastAPI or uvicorn missing, or a half-removed install
            raise LongctxError(
                f"longctx serve needs the server package, which is not installed (missing module "
                f"{e.name or 'longctx_serve'!r}): {INSTALL}"
            ) from None
        return serve_pipeline(
            args.pipeline,
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            model_name=args.model_name,
            max_sessions=args.max_sessions,
            limits={name: getattr(args, name) for name in SERVE_LIMITS},
            batching={k: v for k, v in (("max_batch", args.max_batch), ("max_batch_tokens", args.max_batch_tokens),
                                        ("max_queue", args.max_queue)) if v is not None},
        )
