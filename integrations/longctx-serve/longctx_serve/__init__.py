"""An OpenAI-compatible HTTP server over a longctx-llm engine (``longctx serve PIPELINE.yaml``).

>>> from longctx_llm import Engine
>>> from longctx_serve import create_app
>>> app = create_app(Engine("smollm2-135m-instruct"), api_key=None)   # a FastAPI app; loads nothing yet
"""

__all__ = ["create_app", "serve_pipeline"]


def __getattr__(name: str):
    # imported on first use: `longctx --help` loads this package's command (longctx_serve.command) without FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve_pipeline":
        from .cli import serve_pipeline

        return serve_pipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
