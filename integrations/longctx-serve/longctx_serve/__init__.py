"""An OpenAI-compatible HTTP server over a longctx-llm engine (``longctx serve PIPELINE.yaml``).

>>> from longctx_llm import Engine
>>> from longctx_serve import create_app
>>> app = create_app(Engine("smollm2-135m-instruct"), api_key=None)   # a FastAPI app; loads nothing yet
"""

from .app import create_app
from .cli import serve_pipeline

__all__ = ["create_app", "serve_pipeline"]
