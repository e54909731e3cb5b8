"""Bounds on what one request may ask of the server, checked before any work is done for it.

A request body is read at most ``max_request_bytes`` (413 beyond), parsed as JSON nested at most ``max_json_depth``
levels with integers of at most ``max_int_digits`` digits (400 naming the field), and, once it matches its schema,
its ``stop`` strings and ``tools`` are counted and measured (400 naming the field and the limit). Every message says
which ``longctx serve`` option raises the limit. The defaults are those of ``longctx serve`` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Optional

from .errors import APIError


@dataclass(frozen=True)
class RequestLimits:
    """Per-request bounds (see the module docstring); every field must be >= 1."""

    max_request_bytes: int = 32 * 1024 * 1024
    max_stop: int = 16
    max_stop_chars: int = 512
    max_tools: int = 128
    max_tool_bytes: int = 64 * 1024
    max_json_depth: int = 64
    max_int_digits: int = 64

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{f.name}: must be an integer >= 1, got {value!r}")


#: the ``longctx serve`` option of each limit that has one (named in the messages)
OPTIONS = {
    "max_request_bytes": "--max-request-bytes",
    "max_stop": "--max-stop",
    "max_stop_chars": "--max-stop-chars",
    "max_tools": "--max-tools",
    "max_tool_bytes": "--max-tool-bytes",
}


def _over(what: str, limit_name: str, limit: int) -> str:
    option = OPTIONS.get(limit_name)
    how = f"; `longctx serve {option} N` raises it" if option else ""
    return f"{what}, over this server's limit of {limit}{how}"


async def read_body(request: Any, limits: RequestLimits) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed ``max_request_bytes``."""
    limit = limits.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise APIError(413, _over(f"the request body has {int(declared)} bytes", "max_request_bytes", limit),
                       code="request_too_large")
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise APIError(413, _over(f"the request body has more than {limit} bytes", "max_request_bytes", limit),
                           code="request_too_large")
        parts.append(chunk)
    return b"".join(parts)


class _BigInt:
    """An integer literal too long to convert (kept as its digit count until the walk names its field)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int):
        self.digits = digits


def _path(parts: tuple) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "the request body"


def parse_json(raw: bytes, limits: RequestLimits) -> Any:
    """The parsed body; nesting beyond ``max_json_depth`` and over-long integers are 400s naming where they are."""
    max_digits = limits.max_int_digits

    def parse_int(text: str) -> Any:
        digits = len(text.lstrip("-"))
        return _BigInt(digits) if digits > max_digits else int(text)

    too_deep = APIError(400, f"the request body nests arrays and objects deeper than {limits.max_json_depth} levels "
                        f"(the limit of this server)", code="invalid_json")
    try:
        body = json.loads(raw, parse_int=parse_int)
    except RecursionError:  # deeper than the parser's own stack allows: far beyond the limit
        raise too_deep from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON ({e})", code="invalid_json") from None
    except ValueError as e:  # anything else the decoder refuses
        raise APIError(400, f"the request body is not valid JSON ({str(e)[:200]})", code="invalid_json") from None
    stack: list[tuple[Any, tuple, int]] = [(body, (), 0)]
    while stack:  # iterative: the depth limit is what protects every recursive step after this one
        value, where, depth = stack.pop()
        if isinstance(value, _BigInt):
            field = _path(where)
            raise APIError(400, f"{field}: an integer of {value.digits} digits (valid: at most {max_digits} digits)",
                           param=str(where[0]) if where else None, code="invalid_value")
        if isinstance(value, (dict, list)):
            if depth >= limits.max_json_depth:
                raise too_deep
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, (*where, k), depth + 1) for k, v in items)
    return body


def check_request(req: Any, limits: RequestLimits) -> None:
    """``stop`` and ``tools`` of a validated request within their limits (400 naming the field and the limit)."""
    stop = req.stop
    if stop is not None:
        strings = [stop] if isinstance(stop, str) else list(stop)
        if len(strings) > limits.max_stop:
            raise APIError(400, "stop: " + _over(f"{len(strings)} stop strings", "max_stop", limits.max_stop),
                           param="stop", code="limit_exceeded")
        for i, s in enumerate(strings):
            if len(s) > limits.max_stop_chars:
                field = "stop" if isinstance(stop, str) else f"stop[{i}]"
                raise APIError(400, f"{field}: " + _over(f"a stop string of {len(s)} characters", "max_stop_chars",
                                                         limits.max_stop_chars), param="stop", code="limit_exceeded")
    tools: Optional[list] = getattr(req, "tools", None)
    if tools:
        if len(tools) > limits.max_tools:
            raise APIError(400, "tools: " + _over(f"{len(tools)} tools", "max_tools", limits.max_tools),
                           param="tools", code="limit_exceeded")
        for i, tool in enumerate(tools):
            size = len(json.dumps(tool, ensure_ascii=False).encode())
            if size > limits.max_tool_bytes:
                raise APIError(400, f"tools[{i}]: " + _over(f"a tool of {size} bytes of JSON", "max_tool_bytes",
                                                            limits.max_tool_bytes), param="tools",
                               code="limit_exceeded")
