"""The eval commands' comma-separated values (``--lengths 4096,8192``, ``--context``, ``--depths``)."""

from __future__ import annotations

from ..errors import LongctxError


def parse_ints(text: str, flag: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError as e:
        raise LongctxError(f"{flag}: expected comma-separated integers, got {text!r}") from e
    if not values or any(n < minimum for n in values):
        raise LongctxError(f"{flag}: each value must be >= {minimum}, got {text!r}")
    return values


def parse_lengths(text: str) -> list[int]:
    return parse_ints(text, "--lengths", minimum=2)
