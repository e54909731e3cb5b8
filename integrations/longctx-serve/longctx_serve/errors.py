"""Exceptions -> OpenAI-style JSON errors ``{"error": {"message", "type", "param", "code"}}``.

The message is our own exception's message (it names the bad value and the valid ones). An exception we did not
raise on purpose becomes a 500 whose message names its type; it is logged with its traceback and the server keeps
serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from longctx_llm.errors import (
    BusyError,
    ConfigError,
    ContextWindowError,
    InputError,
    LongctxError,
    ModelLoadError,
    PluginError,
    ResourceError,
    SessionError,
)

logger = logging.getLogger("longctx_serve")


@dataclass
class APIError(Exception):
    """An error answered as-is (status, OpenAI error type, offending parameter, code)."""

    status: int
    message: str
    type: str = "invalid_request_error"
    param: Optional[str] = None
    code: Optional[str] = None
    retry_after: Optional[int] = None  # seconds, sent as Retry-After (503: the server is busy)

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _param(message: str) -> Optional[str]:
    """The request field a core message starts with (``"stop: expected ..."`` -> ``"stop"``)."""
    head = message.split(":", 1)[0].strip()
    if head and " " not in head and len(head) < 64:
        return head.split(".", 1)[0].split("[", 1)[0]
    return None


def to_api_error(exc: BaseException) -> APIError:
    """The HTTP answer for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    msg = str(exc) or type(exc).__name__
    if isinstance(exc, ContextWindowError):
        return APIError(400, msg, param="messages", code="context_length_exceeded")
    if isinstance(exc, (InputError, ConfigError, PluginError)):
        return APIError(400, msg, param=_param(msg), code="invalid_value")
    if isinstance(exc, BusyError):
        return APIError(503, msg, type="server_error", code="server_busy", retry_after=1)
    if isinstance(exc, ResourceError):
        return APIError(507, msg, type="server_error", code="insufficient_resources")
    if isinstance(exc, SessionError):
        return APIError(409, msg, param="session", code="session_error")
    if isinstance(exc, ModelLoadError):
        return APIError(503, msg, type="server_error", code="model_unavailable")
    if isinstance(exc, LongctxError):  # e.g. the guided decoder could not read a value the model wrote
        return APIError(422, msg, type="invalid_response_error", code=type(exc).__name__)
    logger.error("internal error while serving a request", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {str(exc)[:300]}", type="server_error",
                    code="internal_error")
