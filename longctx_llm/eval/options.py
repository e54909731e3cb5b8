"""The eval commands' comma-separated values (``--lengths 4096,8192``, ``--context``, ``--depths``) and the help of
the flags that ``longctx eval compare`` shares with one command."""

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


SAME_TOKENS_HELP = ("score the same tokens at every length: the first max(--lengths) tokens in consecutive windows of "
                    "each length, each window from scratch, so only the context changes between lengths")
KEY_NLL_HELP = "also score the key teacher-forced after the prompt: mean NLL per key token (one more prefill per trial)"
